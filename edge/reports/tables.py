"""The report as CSV: the differential (one row per class) and the cells (one row per cell)."""

from __future__ import annotations

import csv
import io

from edge.reports.content import LabReport


def differential_csv(report: LabReport) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    r = report.report
    w.writerow(["slide_id", "specimen_id", "status", "version", "class", "cells", "percent", "ci95_low", "ci95_high"])
    for name in report.classes:
        count, percent, low, high = report.share(name)
        row = [report.slide_id, report.specimen_id or "", report.status, report.version, name, count]
        w.writerow([*row, f"{percent:.2f}", f"{low:.2f}", f"{high:.2f}"])
    w.writerow(
        [
            report.slide_id,
            report.specimen_id or "",
            report.status,
            report.version,
            "total_counted",
            r.countable,
            "",
            "",
            "",
        ]
    )
    return out.getvalue().encode("utf-8")


def cells_csv(report: LabReport) -> bytes:
    """Every stored cell: where it is, what the machine said, and where a person put it (if they did)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(
        [
            "slide_id",
            "cell_id",
            "field",
            "x1",
            "y1",
            "x2",
            "y2",
            "class",
            "probability",
            "countable",
            "p_countable",
            "reviewed_class",
            "counted_as",
        ]
    )
    for c in report.cells:
        w.writerow(
            [
                report.slide_id,
                c.cell_id,
                c.field_index,
                *(f"{v:.1f}" for v in c.box),
                c.machine_class,
                f"{c.class_probability:.4f}",
                int(c.countable),
                f"{c.p_countable:.4f}",
                c.label or "",
                c.tray,
            ]
        )
    return out.getvalue().encode("utf-8")
