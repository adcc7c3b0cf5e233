"""The box's current slide for dashboards: the retained ``current`` topic, and old slides'
retained messages cleared so the broker does not keep every slide ever counted."""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

from edge.counting.rules import RuleOutcome
from edge.errors import EdgeError
from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import CurrentSlideMessage, ReportMessage, TallyMessage
from edge.mqtt.topics import Topics

log = logging.getLogger(__name__)

# Worst first: a slide's call is its most severe rule state.
_SEVERITY: tuple[RuleOutcome, ...] = ("positive", "indeterminate", "negative", "not_applicable")


class RetainedSink(Protocol):
    def publish(self, topic: str, message: CurrentSlideMessage, retain: bool = False) -> None: ...

    def clear_retained(self, topic: str) -> None: ...


class RetainedSlides(Protocol):
    """Where the finished slides are remembered (the journal); None: this run's only."""

    def retained_to_clear(self, keep: int) -> list[str]: ...

    def mark_cleared(self, slide_ids: list[str]) -> None: ...


def slide_call(states: list[RuleOutcome]) -> RuleOutcome:
    for state in _SEVERITY:
        if state in states:
            return state
    return "not_applicable"


class CurrentSlide:
    """Follows the count (``tally`` after every field, ``report`` at the end) and publishes the
    retained summary; the newest summary is kept for the metrics endpoint."""

    def __init__(
        self,
        publisher: RetainedSink,
        topics: Topics,
        factory: MessageFactory,
        keep_slides: int,
        journal: RetainedSlides | None = None,
    ) -> None:
        self.publisher, self.topics, self.factory = publisher, topics, factory
        self.keep_slides = keep_slides
        self.journal = journal
        self._finished: deque[str] = deque()  # without a journal: this run's slides, oldest first
        self.latest = CurrentSlideMessage(
            **factory._envelope(), state="idle", slide_id=None, specimen_id=None, started=None, ended=None,
            fields=0, cells_counted=0, target_count=None, progress=0.0, percent={}, rules={},
            rule_state="not_applicable", domain="not_checked", topic=None,
        )  # fmt: skip

    def tally(self, tally: TallyMessage) -> None:
        self._publish(self._summary(tally, "counting", self.topics.tally(tally.slide_id)))

    def report(self, report: ReportMessage) -> None:
        self._publish(self._summary(report, "finished", self.topics.report(report.slide_id)))
        self._clear_old(report.slide_id)

    def _summary(self, tally: TallyMessage, state: str, topic: str) -> CurrentSlideMessage:
        rules = {rule.id: rule.state for rule in tally.rules}
        return CurrentSlideMessage(
            **self.factory._envelope(), state=state, slide_id=tally.slide_id, specimen_id=tally.specimen_id,  # type: ignore[arg-type]
            started=tally.started, ended=getattr(tally, "ended", None), fields=tally.fields,
            cells_counted=tally.countable, target_count=tally.target_count, progress=tally.progress,
            percent={share.class_name: share.percent for share in tally.shares}, rules=rules,
            intervals={share.class_name: (share.ci_low, share.ci_high) for share in tally.shares},
            rule_state=slide_call(list(rules.values())),
            domain=tally.domain.state if tally.domain is not None else "not_checked", topic=topic,
        )  # fmt: skip

    def _publish(self, message: CurrentSlideMessage) -> None:
        self.latest = message  # one reference swapped: the metrics thread reads whole messages
        try:
            self.publisher.publish(self.topics.current, message, retain=True)
        except EdgeError as exc:  # the count goes on; the next field sends a newer one
            log.warning("current slide not published: %s", exc)

    def _clear_old(self, finished: str) -> None:
        """Retained tally and report of slides beyond the newest ``keep_slides``: cleared on the broker
        (the journal, the slide store and the lab keep them)."""
        try:
            if self.journal is not None:
                old = self.journal.retained_to_clear(self.keep_slides)
            else:
                if finished not in self._finished:
                    self._finished.append(finished)
                old = []
                while len(self._finished) > self.keep_slides:
                    old.append(self._finished.popleft())
            for slide_id in old:
                self.publisher.clear_retained(self.topics.tally(slide_id))
                self.publisher.clear_retained(self.topics.report(slide_id))
            if old and self.journal is not None:
                self.journal.mark_cleared(old)
        except EdgeError as exc:
            log.warning("old slides' retained messages not cleared (next slide tries again): %s", exc)
            return
        if old:
            log.info("retained tally and report cleared for %d slide(s) older than the newest %d",
                     len(old), self.keep_slides)  # fmt: skip
