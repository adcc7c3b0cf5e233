"""The running differential of one slide."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace

from edge.analysis.field import FieldResult
from edge.counting.domain import DomainCheck, DomainGuard
from edge.counting.intervals import wilson
from edge.counting.rules import RulePack, RuleState, evaluate
from edge.counting.size import SizeWatch
from edge.engines.bundle import ClassSpec, DomainGuardSpec, ScaleSpec


@dataclass(frozen=True)
class ClassShare:
    name: str
    count: int
    percent: float
    ci_percent: tuple[float, float]


@dataclass(frozen=True)
class SkippedField:
    source: str
    reason: str


@dataclass
class Slide:
    slide_id: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    )
    specimen_id: str | None = None
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    ended: dt.datetime | None = None
    source: str | None = None  # what was counted (folder, camera, ring): a resume must be the same


class Tally:
    """Counts per class of countable cells, plus what was left out and why."""

    def __init__(
        self,
        classes: list[ClassSpec],
        rules: RulePack,
        target_count: int,
        confidence: float = 0.95,
        denominator_roles: tuple[str, ...] = ("wbc", "key", "other"),
        domain_guard: DomainGuardSpec | None = None,
        review_below: float = 0.0,
        scale: ScaleSpec | None = None,
        um_per_px: float | None = None,
    ) -> None:
        """``scale``: the bundle's (its detector's working scale); ``um_per_px``: the camera's in use."""
        self.classes = classes
        self.review_below = review_below
        self.flagged = 0  # counted cells whose top class probability is under review_below: look at them
        self.rules = rules
        self.target_count = target_count
        self.confidence = confidence
        self._in_denominator = {c.name for c in classes if c.role in denominator_roles}
        self.counts: Counter[str] = Counter()
        self.fields = 0
        self.cells_detected = 0
        self.not_countable = 0
        self.skipped: list[SkippedField] = []
        self.guard = DomainGuard(domain_guard)
        self.size = SizeWatch(scale, um_per_px)
        self._class_index = {c.name: i for i, c in enumerate(classes)}

    def add(self, result: FieldResult) -> None:
        self.fields += 1
        self.cells_detected += len(result.cells)
        if result.scale is not None:  # every box, as the bundle's cell sizes were measured
            self.size.add([c.box for c in result.cells], result.scale.factor)
        for cell in result.cells:
            if cell.countable:
                self.counts[cell.class_name] += 1
                self.flagged += cell.class_probability < self.review_below
                self.guard.add(cell.colour, cell.class_probability, self._class_index.get(cell.class_name))
            else:
                self.not_countable += 1

    def skip(self, source: str, reason: str) -> None:
        self.skipped.append(SkippedField(source, reason))

    @property
    def denominator(self) -> int:
        return sum(n for name, n in self.counts.items() if name in self._in_denominator)

    @property
    def progress(self) -> float:
        return min(1.0, self.denominator / self.target_count)

    def shares(self) -> list[ClassShare]:
        n = self.denominator
        out = []
        for spec in self.classes:
            if spec.name not in self._in_denominator:
                continue
            k = self.counts[spec.name]
            low, high = wilson(k, n, self.confidence)
            out.append(ClassShare(spec.name, k, 100.0 * k / n if n else 0.0, (100.0 * low, 100.0 * high)))
        return out

    def rule_states(self) -> list[RuleState]:
        known = {c.name for c in self.classes}
        n = self.denominator
        states = [evaluate(r, self.counts[r.class_name], n, known, self.confidence) for r in self.rules.rules]
        domain = self.domain()
        if not domain.shifted:
            return states
        # A slide unlike the training data: a count may look decisive and be wrong; no rule decides.
        return [
            s
            if s.state == "not_applicable"
            else replace(s, state="indeterminate", cells_to_settle=None, note=domain.sentence())
            for s in states
        ]

    def domain(self) -> DomainCheck:
        """The colour guard's verdict, shifted too when the cells are not the size the detector works at."""
        check = self.guard.check()
        size = self.size.check()
        if not size.changed:
            return check
        return replace(check, state="shifted", reasons=(*check.reasons, size.reason()))
