"""``marrow-edge evaluate`` and ``marrow-edge validate-slides``: measuring a bundle on labelled data.
Registered through the ``marrow_edge.commands`` entry point (pyproject.toml), so the runtime
(``edge``) never imports ``training``; the heavy imports happen when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.errors import EdgeError


def register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a bundle on labelled data (prints a JSON summary as its last line)",
        description="Runs the appliance's own inference path (ONNX Runtime on the bundle), so it measures "
        "what ships. The last line of output is a JSON summary.",
    )
    what = p.add_subparsers(dest="what", required=True, metavar="cells|fields")
    cells = what.add_parser("cells", help="classifier metrics on folder-per-class crops")
    cells.add_argument("cells_dir", type=Path, help="one folder per class, named by class name or alias")
    fields = what.add_parser("fields", help="detector AP on annotated fields")
    fields.add_argument("data_dir", type=Path, help="YOLO root (data.yaml), VOC root, or COCO JSON / its folder")
    fields.add_argument("--format", choices=["yolo", "voc", "coco"], required=True)
    fields.add_argument("--labels", help="comma-separated ground-truth labels that count as cells")
    for q in (cells, fields):
        q.add_argument("--bundle", type=Path, required=True)
        q.add_argument("--split", choices=["train", "val", "test"], help="evaluate only this split")
        q.add_argument("--plots", type=Path, help="folder for PR/ROC/confusion plots (PNG)")
        q.add_argument("--threads", type=int, default=0)
    cells.add_argument("--split-seed", type=int, default=0, help="seed of the 70/10/20 split (with --split)")
    cells.add_argument(
        "--groups",
        action="store_true",
        help="folders name five white-cell types (NEUTROPHIL, LYMPHOCYTE, MONOCYTE, EOSINOPHIL, BASOPHIL), as "
        "another lab's set does: grouped accuracy",
    )
    p.set_defaults(handler=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    from training.data.readers import AnnotationError
    from training.evaluation.evaluate import evaluate_cells, evaluate_fields

    try:
        if args.what == "cells":
            report = evaluate_cells(
                args.bundle, args.cells_dir, args.split, args.split_seed, args.plots, args.threads, args.groups
            )
        else:
            labels = args.labels.split(",") if args.labels else None
            report = evaluate_fields(
                args.bundle, args.format, args.data_dir, labels, args.split, args.plots, args.threads
            )
    except AnnotationError as exc:
        raise EdgeError(str(exc)) from None
    sys.stdout.write(json.dumps(report, separators=(",", ":")) + "\n")
    return 0


def register_validate_slides(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate-slides",
        help="compose marrow slides from held-back cells at known blast shares and count them",
        description="Marrow slides made of matek_bm test cells at known blast shares, counted through the "
        "count path; prints the blast rule's call against the truth (a markdown table, then a JSON summary).",
    )
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", type=Path, help="the shared data folder (holds matek_bm/)")
    p.add_argument("--shares", default="0,5,10,20,30,40,50", help="blast percentages, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="slides per share")
    p.add_argument("--cells", type=int, default=200, help="countable cells composed per slide")
    p.add_argument(
        "--grids",
        help="instead: fields of n x n held-back cells (e.g. 2,3,4,6) at each --optical scale, counted fitted, at the "
        "true scale and at the scale calibrate-scale measures; per-class detected / counted rates",
    )
    p.add_argument("--optical", default="0.5,1,2", help="with --grids: optical scales (2: twice the pixels per um)")
    p.add_argument("--fields", type=int, help="with --grids: at most this many fields per row (default: every cell)")
    p.set_defaults(handler=validate_slides)


def validate_slides(args: argparse.Namespace) -> int:
    from training.data.compose import DATA
    from training.evaluation.slides import summary, table, validate

    data = args.data or DATA
    if not (data / "matek_bm").is_dir():
        raise EdgeError(f"{data}/matek_bm is missing: the slides are composed from its held-back cells")
    if args.grids:
        return validate_grids(args, data)
    try:
        shares = [float(v) for v in args.shares.split(",")]
    except ValueError:
        raise EdgeError(f"--shares must be numbers, got {args.shares!r}") from None
    outcomes = validate(args.bundle, shares, args.repeats, args.cells, data)
    sys.stdout.write(table(outcomes) + "\n" + json.dumps(summary(outcomes)) + "\n")
    return 0


def validate_grids(args: argparse.Namespace, data: Path) -> int:
    from training.evaluation import scales

    try:
        grids = [int(v) for v in args.grids.split(",")]
        opticals = [float(v) for v in args.optical.split(",")]
    except ValueError:
        raise EdgeError(
            f"--grids takes whole numbers and --optical numbers, got {args.grids!r} / {args.optical!r}"
        ) from None
    if min(grids) < 1 or min(opticals) <= 0:
        raise EdgeError("--grids and --optical must be positive")
    outcomes, checks = scales.validate_grids(args.bundle, grids, opticals, data, args.fields)
    sys.stdout.write(scales.table(outcomes) + "\n\n" + scales.calibration_table(checks) + "\n")
    sys.stdout.write(json.dumps(scales.summary(outcomes, checks)) + "\n")
    return 0
