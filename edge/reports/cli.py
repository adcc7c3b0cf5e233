"""``marrow-edge report``: a slide's report as a file, or queued for the LIS.

    marrow-edge report --slide ID --format pdf|fhir|hl7|csv --out FILE [--paper a4|letter] [--version N]
    marrow-edge report --slide ID --send        # queue its signed report(s) for reports.lis and try now
    marrow-edge report --lis-log                # what went to the LIS, what waits, what was refused

The slide store is the config's ``review.store``. ``csv`` writes the differential to FILE and the
cells beside it (FILE's stem + ``-cells.csv``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from edge.config import AppConfig, LisConfig, load_config
from edge.errors import ConfigError
from edge.reports.content import LabReport, load_report
from edge.reports.fhir import fhir_bytes
from edge.reports.hl7v2 import Parties, to_oru
from edge.reports.lis import LisLink, SenderBusy, Target
from edge.reports.tables import cells_csv, differential_csv
from edge.review.store import SlideStore

FORMATS = ("pdf", "fhir", "hl7", "csv")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="a slide's report as PDF, FHIR, HL7 v2 or CSV; LIS delivery",
        description="Write a slide's report from the slide store (review.store): the latest signed version, or a "
        "preliminary one from the reviewed cells when it is not signed. --send queues its signed versions for the "
        "LIS (reports.lis); --lis-log lists deliveries.",
    )
    p.add_argument("--config", type=Path, help="YAML config naming review.store (and reports.*)")
    p.add_argument("--slide", help="slide id (see `marrow-edge review list`)")
    p.add_argument("--format", choices=FORMATS)
    p.add_argument("--out", type=Path, help="file to write")
    p.add_argument("--paper", choices=["a4", "letter"], help="PDF page size (default reports.paper)")
    p.add_argument("--version", type=int, help="a signed version other than the latest")
    p.add_argument("--send", action="store_true", help="queue the slide's signed versions for the LIS, try once now")
    p.add_argument("--lis-log", action="store_true", help="list the LIS outbox")
    p.set_defaults(handler=run)


def render(report: LabReport, store: SlideStore, config: AppConfig, fmt: str, paper: str | None = None) -> bytes:
    """One report in one format (the review page's downloads use this too)."""
    r = config.reports
    if fmt == "pdf":
        from edge.reports.pdf import to_pdf  # ReportLab only where a PDF is made

        return to_pdf(report, store, paper or r.paper, r.gallery_per_class, r.institution)  # type: ignore[arg-type]
    if fmt == "fhir":
        return fhir_bytes(report, r.loinc)
    if fmt == "hl7":
        return to_oru(report, parties(config), r.loinc).encode("utf-8")
    if fmt == "csv":
        return differential_csv(report)
    if fmt == "cells-csv":
        return cells_csv(report)
    raise ConfigError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


def parties(config: AppConfig) -> Parties:
    lis = config.reports.lis
    if lis is None:
        return Parties(sending_facility=config.device_id)
    return Parties(
        lis.sending_application,
        lis.sending_facility or config.device_id,
        lis.receiving_application,
        lis.receiving_facility,
        lis.processing_id,
    )


def lis_link(store: SlideStore, config: AppConfig) -> LisLink | None:
    lis: LisConfig | None = config.reports.lis
    if lis is None:
        return None
    target = Target(lis.host, lis.port, lis.drop_folder, lis.timeout_s)
    return LisLink(store, target, parties(config), config.reports.loinc, lis.retry_s)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.review.store is None:
        raise ConfigError("no review.store in the config: reports are made from the slide store")
    store = SlideStore(config.review.store)
    try:
        return _run(args, config, store)
    finally:
        store.close()


def _run(args: argparse.Namespace, config: AppConfig, store: SlideStore) -> int:
    write: Callable[[str], object] = sys.stdout.write
    if args.lis_log:
        link = lis_link(store, config)
        if link is None:
            raise ConfigError("no reports.lis in the config")
        for row in link.log_rows():
            error = f"  ({row['last_error']})" if row["last_error"] else ""
            write(
                f"{row['slide_id']} v{row['version']}  {row['control_id']}  {row['state']:<9} "
                f"{row['attempts']} attempt(s)  queued {row['queued']}{error}\n"
            )
        return 0
    if not args.slide:
        raise ConfigError("report: give --slide ID (or --lis-log)")
    if args.send:
        link = lis_link(store, config)
        if link is None:
            raise ConfigError("no reports.lis in the config: say where the LIS listens (host/port or drop_folder)")
        versions = [s["version"] for s in store.signoffs(args.slide)]
        if not versions:
            raise ConfigError(f"slide {args.slide} is not signed: only signed reports go to the LIS")
        for v in versions:
            write(f"queued {args.slide} v{v} as {link.queue(args.slide, v, again=True)}\n")
        try:
            delivered = link.deliver()
        except SenderBusy:
            write(f"the running display sends to {link.target}: it takes them from the queue\n")
            link.wake()
            return 0
        finally:
            link.release()
        rows = [r for r in link.log_rows() if r["slide_id"] == args.slide]
        waiting = [r for r in rows if r["state"] != "delivered"]
        write(f"{delivered} delivered now to {link.target}; {len(waiting)} of this slide not delivered")
        write("".join(f"\n  v{r['version']} {r['state']}: {r['last_error'] or '-'}" for r in waiting) + "\n")
        return 0 if not waiting else 1
    if not args.format or not args.out:
        raise ConfigError("report: give --format and --out (or --send)")
    report = load_report(store, args.slide, args.version)
    data = render(report, store, config, args.format, args.paper)
    _write(args.out, data)
    written = [args.out]
    if args.format == "csv":
        cells = args.out.with_name(args.out.stem + "-cells.csv")
        _write(cells, render(report, store, config, "cells-csv"))
        written.append(cells)
    write(
        f"{report.status} report of slide {report.slide_id}"
        f"{f' (version {report.version})' if report.version else ''} -> {', '.join(map(str, written))}\n"
    )
    return 0


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
