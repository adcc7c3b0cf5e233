"""What a lab report says, gathered once from the slide store for every format.

A signed slide is reported as signed: the latest signed version, final or amended, exactly as
it was signed (the store never changes it). A slide not signed yet is reported as
*preliminary*: the reviewed cells recounted now, with the machine's slide facts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import Provenance, ReportMessage, RuleOut, SignedReportMessage
from edge.review.records import NOT_COUNTABLE, ReviewError, SlideRecord, StoredCell
from edge.review.recount import as_slide, classes_of, recount
from edge.review.store import SlideStore

Status = Literal["preliminary", "final", "amended"]


@dataclass(frozen=True)
class LabReport:
    record: SlideRecord
    report: ReportMessage  # counts, shares with intervals, rules, domain, disclaimer, provenance
    status: Status
    version: int  # signed version; 0 for a preliminary report
    operator: str | None
    signed_at: dt.datetime | None
    reason: str | None  # why it was amended
    amending: bool  # a person is changing the signed slide: a newer version may follow
    cells: list[StoredCell]
    classes: list[str]  # counted classes in bundle order
    created: dt.datetime

    @property
    def slide_id(self) -> str:
        return self.record.slide_id

    @property
    def specimen_id(self) -> str | None:
        return self.record.specimen_id

    @property
    def device_id(self) -> str:
        return self.record.device_id or self.report.device_id

    @property
    def provenance(self) -> Provenance:
        return self.report.provenance

    @property
    def effective(self) -> dt.datetime:
        return self.report.started

    @property
    def issued(self) -> dt.datetime:
        return self.signed_at or self.created

    @property
    def incomplete(self) -> str | None:
        """A count with no cells or short of its target, said plainly (every format carries it)."""
        r = self.report
        if r.countable == 0:
            return "NO CELLS COUNTED: this report holds no differential."
        if r.countable < r.target_count:
            return (
                f"INCOMPLETE COUNT: {r.countable} of the {r.target_count}-cell target counted; "
                "the percentages are less certain than planned (see their 95% intervals)."
            )
        return None

    def share(self, name: str) -> tuple[int, float, float, float]:
        """(count, percent, ci_low, ci_high) of one class."""
        for s in self.report.shares:
            if s.class_name == name:
                return s.count, s.percent, s.ci_low, s.ci_high
        return 0, 0.0, 0.0, 0.0

    def gallery(self, store: SlideStore, per_class: int = 6) -> Iterator[tuple[str, list[bytes]]]:
        """Per counted class, crops of its most confident cells (as they sit after review)."""
        for name in self.classes:
            cells = sorted((c for c in self.cells if c.tray == name and c.has_crop), key=lambda c: -c.class_probability)
            images = [store.image(self.slide_id, c.cell_id, "crop") for c in cells[:per_class]]
            yield name, [i for i in images if i]


def load_report(store: SlideStore, slide_id: str, version: int | None = None) -> LabReport:
    """The slide's report: a signed version (the latest unless ``version``), else a preliminary one."""
    record = store.slide(slide_id)
    if record.machine_report is None:
        raise ReviewError(f"slide {slide_id} is {record.state}: it has no report until its count has finished")
    cells = store.cells(slide_id)
    classes = [c.name for c in classes_of(record.setup) if c.role != "not_countable"]
    created = dt.datetime.now(dt.timezone.utc)
    signoffs = store.signoffs(slide_id)
    if version is not None:
        signoffs = [s for s in signoffs if s["version"] == version]
        if not signoffs:
            raise ReviewError(f"slide {slide_id} has no signed version {version}")
    if signoffs:
        signed = SignedReportMessage.model_validate(signoffs[-1]["report"])
        return LabReport(
            record=record,
            report=signed,
            status=signed.status,
            version=signed.version,
            operator=signed.operator,
            signed_at=signed.signed_at,
            reason=signed.reason,
            amending=record.state == "amending",
            cells=cells,
            classes=classes,
            created=created,
        )
    machine = ReportMessage.model_validate(record.machine_report)
    factory = MessageFactory(record.device_id or machine.device_id, machine.provenance)
    slide = as_slide(record)
    report = factory.report(slide, recount(record, cells, reviewed=True))
    # the slide's own facts stay as counted (a recount knows neither when it ended nor its target)
    report = report.model_copy(update={"ended": machine.ended, "started": machine.started})
    return LabReport(
        record=record,
        report=report,
        status="preliminary",
        version=0,
        operator=None,
        signed_at=None,
        reason=None,
        amending=False,
        cells=cells,
        classes=classes,
        created=created,
    )


def applicable_rules(report: LabReport) -> list[RuleOut]:
    """The rules this bundle's classes can decide (the others are named once, not listed)."""
    return [r for r in report.report.rules if r.state != "not_applicable"]


def not_applicable_note(report: LabReport) -> str | None:
    skipped = [r.id for r in report.report.rules if r.state == "not_applicable"]
    return f"Not applicable to this bundle's classes: {', '.join(skipped)}." if skipped else None


RULE_WORDS = {
    "positive": "positive",
    "negative": "negative",
    "indeterminate": "indeterminate (the interval straddles the threshold: count more cells)",
    "not_applicable": "not applicable to this bundle's classes",
}


def rule_sentence(r: RuleOut) -> str:
    """One rule's outcome in words, with its threshold and the measured share."""
    share = "" if r.percent is None else f"; measured {r.percent:.1f}% (95% CI {r.ci_low:.1f}-{r.ci_high:.1f}%)"
    return f"{r.label}: {RULE_WORDS[r.state]} (threshold {r.class_name} > {r.threshold_percent:g}%{share})"


def status_words(report: LabReport) -> str:
    if report.status == "preliminary":
        return "PRELIMINARY: not reviewed and signed"
    words = (
        f"{report.status.upper()} (version {report.version}), signed by {report.operator} "
        f"at {report.issued:%Y-%m-%d %H:%M} UTC"
    )
    if report.amending:
        words += "; an amendment is in progress"
    return words


__all__ = [
    "NOT_COUNTABLE",
    "LabReport",
    "Status",
    "applicable_rules",
    "load_report",
    "not_applicable_note",
    "rule_sentence",
    "status_words",
]
