"""``marrow-edge adapt``: a bundle adapted to this lab's microscope from its corrected cells (issue 41).

Cells come from the review store (the cells of signed slides: a person's label where one was given,
else the call the person signed; ``--corrected-only``: only relabelled cells) or from a folder with one
sub-folder per label (crops cut as the count path cuts them, e.g. from another box's store). The gate's
table is printed either way; the adapted bundle is written only when the gate accepts it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REFUSED = 6  # exit code: the gate refused the candidate (nothing written)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt the bundle's classifier to this microscope from corrected cells (gated, written as a new version)",
        description="Fit the stage-2 heads of BUNDLE to the site's corrected cells, held to the bundle's own outputs "
        "on its replay cells; a gate compares base and candidate on the bundle's held-back reference cells and on "
        "the site's cells left out of each fold. Labels: a class of the bundle, an alias, or a five-part group "
        "(neutrophil, lymphocyte, monocyte, eosinophil, basophil).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", type=Path, help="the review store (cells of signed slides)")
    where.add_argument("--cells", type=Path, help="a folder with one sub-folder of crops per label")
    p.add_argument("--bundle", type=Path, required=True, help="the bundle to adapt")
    p.add_argument("--out", type=Path, required=True, help="a new, empty folder for the adapted bundle")
    p.add_argument("--operator", default="unknown", help="who adapts it (recorded in the bundle)")
    p.add_argument("--corrected-only", action="store_true", help="with --store: only cells a person relabelled")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(handler=run_adapt)


def print_outcome(outcome, as_json: bool) -> None:
    verdict = outcome.verdict
    if as_json:
        record = {"version": outcome.version, "out": str(outcome.out) if outcome.out else None}
        record |= {"cells_per_type": outcome.cells_per_type, "seconds": round(outcome.seconds, 1)}
        print(json.dumps(record | verdict.record(), indent=1))
        return
    print(f"cells per type: {', '.join(f'{t} {n}' for t, n in outcome.cells_per_type.items())}")
    print(f"{'figure':38s} {'base':>8s} {'adapted':>8s}")
    for row in verdict.table():
        print(f"{row['words']:38s} {row['base']:8.3f} {row['adapted']:8.3f}")
    if verdict.accepted:
        print(f"accepted: {outcome.version} written to {outcome.out} ({outcome.seconds:.0f} s)")
    else:
        print("refused, nothing written: " + "; ".join(verdict.reasons))


def run_adapt(args: argparse.Namespace) -> int:
    from edge.adaptation.adapt import adapt_bundle
    from edge.adaptation.sources import cells_from_folder, cells_from_store
    from edge.engines.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    size = bundle.manifest.classifier.crop_size
    if args.store:
        cells = cells_from_store(args.store, size, args.corrected_only)
    else:
        cells = cells_from_folder(args.cells, size)

    def progress(step: str, done: float) -> None:
        print(f"[{done:4.0%}] {step}", file=sys.stderr, flush=True)

    outcome = adapt_bundle(bundle, cells, args.out, args.operator, progress=progress)
    print_outcome(outcome, args.json)
    return 0 if outcome.verdict.accepted else REFUSED
