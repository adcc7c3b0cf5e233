"""Stamping the box's messages: one envelope sequence per device and run, a stable message_id for
what a message is about (a re-send is a duplicate), and the payloads made from the pipeline's
own objects (field results, gate events, tallies)."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from dataclasses import asdict
from typing import Literal

from edge.analysis.field import FieldResult
from edge.capture.gate import GateEvent
from edge.counting.tally import Slide, Tally
from edge.mqtt.messages import (
    CameraState,
    CellOut,
    DomainOut,
    FieldMessage,
    FieldScaleOut,
    GateMessage,
    PreviewMessage,
    Provenance,
    ReportMessage,
    ReviewMessage,
    RuleOut,
    ShareOut,
    SignedReportMessage,
    SkippedOut,
    StatusMessage,
    TallyMessage,
)


class MessageFactory:
    """Stamps envelopes: one sequence per device and run."""

    def __init__(self, device_id: str, provenance: Provenance) -> None:
        self.device_id = device_id
        self.provenance = provenance
        self._seq = itertools.count()
        self.instance = uuid.uuid4().hex[:12]

    def _envelope(self, key: str | None = None) -> dict:
        """``key`` names what the message is about (slide + field, or slide + report): the same key
        always gives the same message_id, so a consumer drops a re-send as a duplicate."""
        message_id = uuid.uuid5(uuid.NAMESPACE_URL, f"marrow-edge:{self.device_id}:{key}").hex if key else None
        return {
            "message_id": message_id or uuid.uuid4().hex,
            "device_id": self.device_id,
            "seq": next(self._seq),
            "time": dt.datetime.now(dt.timezone.utc),
        }

    def status(
        self, state: Literal["online", "offline", "stopped"], camera: CameraState | None = None
    ) -> StatusMessage:
        return StatusMessage(
            **self._envelope(), state=state, provenance=self.provenance, camera=camera, instance=self.instance
        )

    def gate(self, event: GateEvent) -> GateMessage:
        return GateMessage(
            **self._envelope(),
            decision=event.decision.value,  # type: ignore[arg-type]
            reason=event.reason,
            frame=event.frame,
            position=(round(event.position[0], 1), round(event.position[1], 1)),
            sharpness_ratio=round(event.sharpness_ratio, 3),
            brightness=round(event.brightness, 1),
            overlap=round(event.overlap, 3),
        )

    def preview(self, **fields: object) -> PreviewMessage:
        return PreviewMessage(**self._envelope(), **fields)

    def field(self, slide: Slide, result: FieldResult, class_names: list[str]) -> FieldMessage:
        cells = [
            CellOut(
                box=c.box,
                detector_score=round(c.detector_score, 5),
                class_name=c.class_name,
                class_probability=round(c.class_probability, 5),
                p_countable=round(c.p_countable, 5),
                countable=c.countable,
                probabilities={n: round(float(p), 5) for n, p in zip(class_names, c.probabilities, strict=True)},
            )
            for c in result.cells
        ]
        return FieldMessage(
            **self._envelope(f"{slide.slide_id}/field/{result.index}/{result.source}"),
            slide_id=slide.slide_id,
            specimen_id=slide.specimen_id,
            field_index=result.index,
            source=result.source,
            width=result.width,
            height=result.height,
            cells=cells,
            countable_in_field=len(result.countable_cells),
            timings_ms={k: round(v, 2) for k, v in result.timings_ms.items()},
            scale=FieldScaleOut(**asdict(result.scale)) if result.scale is not None else None,
            provenance=self.provenance,
        )

    def _tally_fields(self, slide: Slide, tally: Tally) -> dict:
        return {
            "slide_id": slide.slide_id,
            "specimen_id": slide.specimen_id,
            "started": slide.started,
            "fields": tally.fields,
            "fields_skipped": len(tally.skipped),
            "cells_detected": tally.cells_detected,
            "countable": tally.denominator,
            "not_countable": tally.not_countable,
            "counts": dict(tally.counts),
            "flagged": tally.flagged,
            "review_below": tally.review_below,
            "target_count": tally.target_count,
            "progress": tally.progress,
            "confidence": tally.confidence,
            "shares": [
                ShareOut(
                    class_name=s.name,
                    count=s.count,
                    percent=s.percent,
                    ci_low=s.ci_percent[0],
                    ci_high=s.ci_percent[1],
                )
                for s in tally.shares()
            ],
            "rules": [
                RuleOut(
                    id=r.id,
                    label=r.label,
                    class_name=r.class_name,
                    threshold_percent=r.threshold_percent,
                    percent=r.percent,
                    ci_low=r.ci_percent[0] if r.ci_percent else None,
                    ci_high=r.ci_percent[1] if r.ci_percent else None,
                    state=r.state,
                    cells_to_settle=r.cells_to_settle,
                    note=r.note,
                )
                for r in tally.rule_states()
            ],
            "domain": self._domain(tally),
            "disclaimer": tally.rules.disclaimer,
            "provenance": self.provenance,
        }

    @staticmethod
    def _domain(tally: Tally) -> DomainOut:
        check, size = tally.domain(), tally.size.check()
        return DomainOut(
            state=check.state,
            colour_distance=None if check.colour_distance is None else round(check.colour_distance, 3),
            mean_confidence=None if check.mean_confidence is None else round(check.mean_confidence, 4),
            cells=check.cells,
            message=check.sentence(),
            um_per_px=size.um_per_px,
            cell_size_ratio=size.ratio,
            scale=size.summary(),
        )

    def tally(self, slide: Slide, tally: Tally) -> TallyMessage:
        # one tally per counted field: the same state after a restart gets the same id
        key = f"{slide.slide_id}/tally/{tally.fields}/{len(tally.skipped)}"
        return TallyMessage(**self._envelope(key), **self._tally_fields(slide, tally))

    def report(self, slide: Slide, tally: Tally) -> ReportMessage:
        return ReportMessage(
            **self._envelope(f"{slide.slide_id}/report"),
            **self._tally_fields(slide, tally),
            ended=slide.ended or dt.datetime.now(dt.timezone.utc),
            target_reached=tally.denominator >= tally.target_count,
            skipped=[SkippedOut(source=s.source, reason=s.reason) for s in tally.skipped],
        )

    def review(self, slide: Slide, **fields: object) -> ReviewMessage:
        return ReviewMessage(
            **self._envelope(), slide_id=slide.slide_id, specimen_id=slide.specimen_id, provenance=self.provenance,
            **fields,
        )  # fmt: skip

    def signed(self, slide: Slide, tally: Tally, version: int, **fields: object) -> SignedReportMessage:
        report = self.report(slide, tally).model_dump(exclude={"kind", "message_id", "seq", "time", "device_id"})
        return SignedReportMessage(
            **self._envelope(f"{slide.slide_id}/signed/{version}"), **report, version=version, **fields
        )
