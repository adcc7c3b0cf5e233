"""``marrow-edge review``: operators, the slide history, and the reviewed cells as a training set.

    marrow-edge review operator add NAME [--pin-stdin]    # asks for the PIN twice (or reads one line)
    marrow-edge review operator list | remove NAME
    marrow-edge review list
    marrow-edge review export --out DIR [--slide ID ...] [--include-unsigned]
    marrow-edge review verify [--slide ID]                # the audit chain and every sign-off against it
    marrow-edge review import --slide ID [--source PATH]  # a counted slide the store missed, from the journal

The store is ``--store`` or the config's ``review.store``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import getpass
import json
import sys
from pathlib import Path

from edge.config import load_config
from edge.errors import ConfigError
from edge.review import audit
from edge.review.desk import ReviewDesk
from edge.review.operators import Operators
from edge.review.store import SlideStore


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review",
        help="operators, slide history, export of reviewed cells",
        description="Manage who may review and sign, list the slides in the store, and export reviewed cells "
        "as a folder-per-class training set.",
    )
    p.add_argument("--config", type=Path, help="YAML config naming review.store")
    p.add_argument("--store", type=Path, help="the slide store (overrides review.store; the fleet page's operators)")
    actions = p.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    op = actions.add_parser("operator", help="add, list or remove operators")
    op.add_argument("verb", choices=["add", "list", "remove"])
    op.add_argument("name", nargs="?")
    op.add_argument("--pin-stdin", action="store_true", help="read the PIN from one line of stdin (scripts)")
    actions.add_parser("list", help="the slides in the store, newest first")
    ex = actions.add_parser("export", help="reviewed cells as a folder-per-class training set with a manifest")
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--slide", action="append", help="only this slide (repeatable); default: every signed slide")
    ex.add_argument("--include-unsigned", action="store_true", help="also slides not signed (not recommended)")
    ve = actions.add_parser("verify", help="check the audit trail's hash chain and every sign-off against it")
    ve.add_argument("--slide", help="only this slide")
    im = actions.add_parser("import", help="a slide counted but not kept in the store (disk full), from the journal")
    im.add_argument("--slide", required=True, help="the slide id the run named")
    im.add_argument("--source", type=Path, help="the folder or video it counted: crops are cut again from it")
    p.set_defaults(handler=run)


def _store(args: argparse.Namespace) -> SlideStore:
    config = load_config(args.config, overrides={"review": {"store": str(args.store)}} if args.store else None)
    if config.review.store is None:
        raise ConfigError("no review.store in the config: the slide store is where reviewed slides are kept")
    return SlideStore(config.review.store)


def run(args: argparse.Namespace) -> int:
    if args.review_command == "import":
        return import_(args)
    store = _store(args)
    try:
        if args.review_command == "operator":
            return _operator(Operators(store), args)
        if args.review_command == "list":
            desk = ReviewDesk(store)
            for s in desk.history(10_000):
                signed = f" v{s['signed_version']}" if s["signed_version"] else ""
                sys.stdout.write(
                    f"{s['slide_id']}  {s['specimen_id'] or '-':<16} {s['state']}{signed:<4} "
                    f"{s['countable'] if s['countable'] is not None else '-'} counted  {s['started'][:19]}\n"
                )
            return 0
        if args.review_command == "verify":
            return verify(store, args.slide)
        return export(store, args.out, args.slide, args.include_unsigned)
    finally:
        store.close()


def _operator(operators: Operators, args: argparse.Namespace) -> int:
    if args.verb == "list":
        for name in operators.names():
            sys.stdout.write(name + "\n")
        return 0
    if not args.name:
        raise ConfigError(f"review operator {args.verb}: give the operator's name")
    if args.verb == "remove":
        if not operators.remove(args.name):
            raise ConfigError(f"no operator {args.name!r}")
        sys.stdout.write(f"operator {args.name} removed (their past sign-offs and audit entries stay)\n")
        return 0
    if args.pin_stdin:
        pin = sys.stdin.readline().rstrip("\n")
    else:
        pin = getpass.getpass(f"PIN for {args.name}: ")
        if getpass.getpass("again: ") != pin:
            raise ConfigError("the two PINs differ; nothing changed")
    operators.add(args.name, pin)
    sys.stdout.write(f"operator {args.name} set\n")
    return 0


def import_(args: argparse.Namespace) -> int:
    from edge.service.recover import import_slide

    done = import_slide(load_config(args.config), args.slide, args.source)
    sys.stdout.write(f"slide {done.slide_id}: {done.fields} field(s), {done.cells} cell(s) imported into the store\n")
    if done.without_images:
        sys.stdout.write(
            f"{len(done.without_images)} field(s) without images (not in --source): "
            f"{', '.join(done.without_images[:5])}{' ...' if len(done.without_images) > 5 else ''}\n"
        )
    return 0


def verify(store: SlideStore, slide_id: str | None = None) -> int:
    """0: every chain and sign-off holds; 3 (like a tampered bundle file): where each breaks, one line per slide."""
    with store.reading() as db:
        rows, breaks = audit.verify(db, slide_id)
    for broken in breaks:
        sys.stdout.write(f"BROKEN {broken}\n")
    if breaks:
        sys.stdout.write(f"{len(breaks)} slide(s) whose audit trail or sign-off does not hold ({store.path})\n")
        return 3
    sys.stdout.write(f"audit trail intact: {rows} row(s), every sign-off matches ({store.path})\n")
    return 0


def export(store: SlideStore, out: Path, slides: list[str] | None, include_unsigned: bool) -> int:
    """Each chosen slide's cells with an image, in the folder of the class they ended in (after review)."""
    chosen = [store.slide(s) for s in slides] if slides else store.slides(10_000)
    if not include_unsigned:
        unsigned = [r.slide_id for r in chosen if r.signed_version == 0 and slides]
        if unsigned:
            raise ConfigError(f"slide(s) {', '.join(unsigned)} not signed: sign them, or pass --include-unsigned")
        chosen = [r for r in chosen if r.signed_version > 0]
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"created": dt.datetime.now(dt.timezone.utc).isoformat(), "store": str(store.path), "slides": []}
    counts: dict[str, int] = {}
    with (out / "cells.csv").open("w", newline="") as f:
        table = csv.writer(f)
        table.writerow(["file", "slide_id", "cell_id", "field_index", "machine", "label", "changed_by_review"])
        for record in chosen:
            signoffs = store.signoffs(record.slide_id)
            bundle = (record.machine_report or {}).get("provenance", {}).get("bundle")
            manifest["slides"].append(
                {
                    "slide_id": record.slide_id,
                    "specimen_id": record.specimen_id,
                    "state": record.state,
                    "bundle": bundle,
                    "signed": [{k: s[k] for k in ("version", "operator", "time", "reason")} for s in signoffs],
                    "reviewed_by": sorted({a["operator"] for a in store.audit(record.slide_id)}),
                }
            )
            for cell in store.cells(record.slide_id):
                image = store.image(record.slide_id, cell.cell_id, "crop")
                if image is None:
                    continue
                folder = out / cell.tray
                folder.mkdir(exist_ok=True)
                name = f"{record.slide_id}_{cell.cell_id:05d}.jpg"
                (folder / name).write_bytes(image)
                counts[cell.tray] = counts.get(cell.tray, 0) + 1
                changed = cell.label is not None
                table.writerow(
                    [f"{cell.tray}/{name}", record.slide_id, cell.cell_id, cell.field_index, cell.machine_tray,
                     cell.tray, int(changed)]
                )  # fmt: skip
    manifest["cells"] = counts
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    sys.stdout.write(f"{sum(counts.values())} cells from {len(chosen)} slide(s) -> {out} ({counts})\n")
    return 0
