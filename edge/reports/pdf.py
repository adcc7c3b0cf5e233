"""The printable report (A4 or Letter), drawn with ReportLab's platypus layout.

Header (specimen, slide, dates, sign-off state), the domain-shift warning when the slide looks
unlike the bundle's training data, the differential with 95% intervals, the rules in words with
their thresholds, a small gallery per class, provenance, the audit of review changes and the
disclaimer. A preliminary report says so on every page.

Text is set in DejaVu Sans when the system has it (Debian's ``fonts-dejavu-core``; found at run
time, never shipped here): Helvetica, ReportLab's built-in, has Latin-1 only and prints a Greek,
Cyrillic, Chinese or Arabic name as black boxes. Without DejaVu the report still prints, in
Helvetica, and a warning says why some names may not.
"""

from __future__ import annotations

import functools
import io
import logging
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, letter
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from edge.reports.content import LabReport, applicable_rules, not_applicable_note, rule_sentence, status_words
from edge.review.store import SlideStore

log = logging.getLogger(__name__)

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"), Path("/usr/local/share/fonts"))
Paper = Literal["a4", "letter"]
PAGES = {"a4": A4, "letter": letter}
GRID = TableStyle(
    [
        ("FONTSIZE", (0, 0), (-1, -1), 8.5),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")),
        ("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
    ]
)


@functools.cache
def fonts() -> tuple[str, str]:
    """(regular, bold) font names: DejaVu Sans registered with ReportLab, else Helvetica."""
    for folder in FONT_DIRS:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            pdfmetrics.registerFont(TTFont("DejaVuSans", str(regular)))
            pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(bold)))
            pdfmetrics.registerFontFamily("DejaVuSans", normal="DejaVuSans", bold="DejaVuSans-Bold")
            return "DejaVuSans", "DejaVuSans-Bold"
    log.warning(
        "PDF report: DejaVu Sans not found (apt-get install fonts-dejavu-core); Helvetica prints Latin-1 only, "
        "so names in other scripts show as boxes"
    )
    return "Helvetica", "Helvetica-Bold"


def to_pdf(
    report: LabReport,
    store: SlideStore,
    paper: Paper = "a4",
    gallery_per_class: int = 6,
    institution: str | None = None,
) -> bytes:
    regular, bold = fonts()
    styles = getSampleStyleSheet()
    for style in styles.byName.values():
        style.fontName = bold if "Bold" in getattr(style, "fontName", "") else regular  # type: ignore[attr-defined]
    body = styles["BodyText"]
    small = ParagraphStyle("small", parent=body, fontSize=7.5, leading=9.5)
    warn = ParagraphStyle("warn", parent=body, textColor=colors.HexColor("#a00000"), fontName=bold)
    r = report.report
    story: list = []
    title = "Differential count report" + (f" - {escape(institution)}" if institution else "")
    story.append(Paragraph(title, styles["Title"]))
    facts = [
        ["Specimen", report.specimen_id or "(none given)", "Slide", report.slide_id],
        ["Counted", f"{r.started:%Y-%m-%d %H:%M} - {r.ended:%H:%M} UTC", "Device", report.device_id],
        [
            "Status",
            Paragraph(escape(status_words(report)), small),
            "Report made",
            f"{report.created:%Y-%m-%d %H:%M} UTC",
        ],
        [
            "Cells counted",
            str(r.countable),
            "Not countable",
            f"{r.not_countable} (of {r.cells_detected} found, {r.fields} fields)",
        ],
    ]
    t = Table(facts, colWidths=[25 * mm, 62 * mm, 25 * mm, 62 * mm])
    t.setStyle(
        TableStyle(
            [
                ("FONTSIZE", (0, 0), (-1, -1), 8.5),
                ("FONTNAME", (0, 0), (-1, -1), regular),
                ("FONTNAME", (0, 0), (0, -1), bold),
                ("FONTNAME", (2, 0), (2, -1), bold),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    story += [t, Spacer(1, 4 * mm)]
    if report.reason:
        story.append(Paragraph(f"Amended: {escape(report.reason)}", body))
    if report.incomplete:
        story.append(Paragraph(escape(report.incomplete), warn))
    if r.domain is not None and r.domain.state == "shifted":
        story.append(
            Paragraph(
                f"WARNING: {escape(r.domain.message)} Counts are not reliable; rules are held indeterminate.", warn
            )
        )
    if not r.provenance.bundle.clinical_use:
        story.append(Paragraph("The model bundle is not validated for clinical use.", warn))

    story.append(Paragraph("Differential", styles["Heading2"]))
    rows = [["Class", "Cells", "%", "95% CI"]]
    for name in report.classes:
        count, percent, low, high = report.share(name)
        rows.append([name.replace("_", " "), str(count), f"{percent:.1f}", f"{low:.1f} - {high:.1f}"])
    rows.append(["Total counted", str(r.countable), "100.0" if r.countable else "-", ""])
    t = Table(rows, colWidths=[60 * mm, 25 * mm, 25 * mm, 40 * mm], repeatRows=1)
    t.setStyle(TableStyle([*GRID.getCommands(), ("FONTNAME", (0, 0), (-1, -1), regular)]))
    story.append(t)

    story.append(Paragraph("Rules", styles["Heading2"]))
    for rule in applicable_rules(report):
        style = warn if rule.state == "positive" else body
        story.append(Paragraph(escape(rule_sentence(rule)), style))
    if skipped := not_applicable_note(report):
        story.append(Paragraph(escape(skipped), small))
    if r.domain is not None:
        story.append(Paragraph(f"Domain-shift guard: {escape(r.domain.state)}. {escape(r.domain.message)}", small))
        if r.domain.scale:
            story.append(Paragraph(f"Counted at {escape(r.domain.scale)}", small))

    story.append(Paragraph("Cells per class (most confident, after review)", styles["Heading2"]))
    side = 17 * mm
    for name, images in report.gallery(store, gallery_per_class):
        if not images:
            continue
        cells = [Image(io.BytesIO(b), width=side, height=side) for b in images]
        row = Table(
            [[Paragraph(escape(name.replace("_", " ")), small), *cells]],
            colWidths=[32 * mm] + [side + 2 * mm] * len(cells),
        )
        row.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("LEFTPADDING", (0, 0), (-1, -1), 1)]))
        story.append(row)

    changes = [a for a in getattr(r, "audit", []) if a.action == "reclassify"]
    if changes:
        story.append(Paragraph("Review changes", styles["Heading2"]))
        lines = [f"{a.time:%Y-%m-%d %H:%M} {a.operator}: cell {a.cell_id} {a.old} -> {a.new}" for a in changes[:60]]
        if len(changes) > 60:
            lines.append(f"... and {len(changes) - 60} more (the full audit is in the slide store)")
        story.append(Paragraph("<br/>".join(escape(x) for x in lines), small))

    b = r.provenance.bundle
    story.append(Paragraph("Provenance", styles["Heading2"]))
    story.append(
        Paragraph(
            escape(
                f"marrow-edge {r.provenance.software_version}; model bundle {b.name} {b.version} (bundle.json sha256 "
                f"{b.hash}), trained on {b.trained_on or 'unknown'}; backend {r.provenance.backend} "
                f"({', '.join(r.provenance.providers)})."
            ),
            small,
        )
    )
    story.append(Spacer(1, 3 * mm))
    story.append(KeepTogether([Paragraph("Disclaimer", styles["Heading3"]), Paragraph(escape(r.disclaimer), small)]))

    state = "PRELIMINARY - NOT SIGNED" if report.status == "preliminary" else report.status.upper()
    footer = f"{report.specimen_id or report.slide_id} - {state}"

    def page(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont(regular, 7.5)
        canvas.drawString(doc.leftMargin, 10 * mm, footer)
        canvas.drawRightString(doc.pagesize[0] - doc.rightMargin, 10 * mm, f"page {doc.page}")
        if report.status == "preliminary":
            canvas.setFillColor(colors.HexColor("#a00000"))
            canvas.setFont(bold, 9)
            canvas.drawCentredString(
                doc.pagesize[0] / 2, doc.pagesize[1] - 10 * mm, "PRELIMINARY - NOT REVIEWED AND SIGNED"
            )
        canvas.restoreState()

    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=PAGES[paper],
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=18 * mm,
        title=f"Differential count {report.specimen_id or report.slide_id}",
        author="marrow-edge",
        subject=f"slide {report.slide_id}, {report.status}",
        invariant=1,
    )
    doc.build(story, onFirstPage=page, onLaterPages=page)
    return out.getvalue()
