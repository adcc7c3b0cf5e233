"""The technician's review of a counted slide: look, move cells, sign; every step audited.

States of a slide in the store: ``counting`` (the count path is on it: no review yet),
``finished`` (the machine's report is out; review is preliminary), ``signed`` (final: the
signed report is kept), ``amending`` (a person changed a signed slide: the next sign-off is
an amendment and the earlier signed versions stay), ``interrupted`` (closed without a report).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from edge.mqtt.messages import AuditOut, ChangeOut, MessageFactory, Provenance, SignedReportMessage
from edge.mqtt.topics import Topics
from edge.review.operators import Operators
from edge.review.recount import as_slide, recount, trays
from edge.review.store import NOT_COUNTABLE, ReviewError, SlideStore, now

log = logging.getLogger(__name__)

# topic, message, retain -> acknowledged by the broker
Send = Callable[[str, BaseModel, bool], bool]

REVIEWABLE = ("finished", "signed", "amending")


class SignedError(ReviewError):
    """A change to a signed slide without saying it is an amendment and why."""


class ReviewDesk:
    def __init__(self, store: SlideStore, topics: Topics | None = None, send: Send | None = None) -> None:
        """``topics`` and ``send``: where review events and signed reports go (None: nowhere, e.g. the CLI)."""
        self.store = store
        self.operators = Operators(store)
        self.topics = topics
        self.send = send
        self._factories: dict[str, MessageFactory] = {}
        self.on_signed: list[Callable[[str, int], None]] = []  # (slide id, version) after a sign-off is stored

    def _factory(self, record: Any) -> MessageFactory:
        report = record.machine_report or {}
        provenance = Provenance.model_validate(report["provenance"])
        key = provenance.model_dump_json()
        if key not in self._factories:
            device_id = record.device_id or (self.topics.device_id if self.topics else "unknown")
            self._factories[key] = MessageFactory(device_id, provenance)
        return self._factories[key]

    # -- reading -----------------------------------------------------------------------------
    def history(self, limit: int = 200) -> list[dict[str, Any]]:
        out = []
        for r in self.store.slides(limit):
            report = r.machine_report or {}
            out.append(
                {
                    "slide_id": r.slide_id,
                    "specimen_id": r.specimen_id,
                    "started": r.started,
                    "ended": r.ended,
                    "state": r.state,
                    "signed_version": r.signed_version,
                    "countable": report.get("countable"),
                    "domain": (report.get("domain") or {}).get("state"),
                }
            )
        return out

    def view(self, slide_id: str) -> dict[str, Any]:
        """Everything the review page shows for one slide."""
        record = self.store.slide(slide_id)
        cells = self.store.cells(slide_id)
        machine = recount(record, cells, reviewed=False)
        reviewed = recount(record, cells, reviewed=True)
        names = [c["name"] for c in record.setup["classes"]]
        report = record.machine_report or {}
        return {
            "slide": {
                "slide_id": record.slide_id,
                "specimen_id": record.specimen_id,
                "started": record.started,
                "ended": record.ended,
                "state": record.state,
                "signed_version": record.signed_version,
                "cells_without_images": record.cells_dropped,
                "domain": report.get("domain"),
                "disclaimer": report.get("disclaimer"),
                "provenance": report.get("provenance"),
            },
            "trays": trays(record.setup),
            "fields": self.store.fields(slide_id),
            "cells": [
                {
                    "id": c.cell_id,
                    "field": c.field_index,
                    "box": c.box,
                    "tray": c.tray,
                    "machine": c.machine_tray,
                    "reviewed": c.label is not None,
                    "probability": c.class_probability,
                    "margin": c.margin,
                    "top": sorted(zip(names, c.probabilities, strict=True), key=lambda t: -t[1])[:3],
                    "why_not": c.why_not,
                    "flags": c.flags,
                    "image": c.has_crop,
                }
                for c in cells
            ],
            "machine": _summary(machine),
            "reviewed": _summary(reviewed),
            "audit": self.store.audit(slide_id),
            "signoffs": [{k: v for k, v in s.items() if k != "report"} for s in self.store.signoffs(slide_id)],
        }

    # -- changing ----------------------------------------------------------------------------
    def reclassify(
        self, slide_id: str, cell_ids: list[int], to: str, operator: str, amend_reason: str | None = None
    ) -> list[ChangeOut]:
        """Move cells to class or tray ``to``; a signed slide only as an amendment with its reason."""
        record = self.store.slide(slide_id)
        if record.state not in REVIEWABLE:
            raise ReviewError(f"slide {slide_id} is {record.state}: it can be reviewed once its count has finished")
        allowed = trays(record.setup)
        if to not in allowed:
            raise ReviewError(f"{to!r} is not a class of this slide; choose one of: {', '.join(allowed)}")
        if record.state == "signed" and not (amend_reason or "").strip():
            raise SignedError(
                f"slide {slide_id} is signed (version {record.signed_version}): a change is an amendment; "
                "give the reason for it"
            )
        by_id = {c.cell_id: c for c in self.store.cells(slide_id)}
        missing = [i for i in cell_ids if i not in by_id]
        if missing or not cell_ids:
            raise ReviewError(f"slide {slide_id} has no cell {missing[0] if missing else '(none given)'}")
        changes = [
            ChangeOut(cell_id=i, field_index=by_id[i].field_index, old=by_id[i].tray, new=to)
            for i in dict.fromkeys(cell_ids)
            if by_id[i].tray != to
        ]
        if not changes:
            return []
        t = now()
        with self.store.transaction() as db:
            state = db.execute("SELECT state FROM slide WHERE slide_id = ?", (slide_id,)).fetchone()[0]
            if state != record.state:
                raise ReviewError(f"slide {slide_id} changed meanwhile ({record.state} -> {state}); reload it")
            if state == "signed":
                db.execute("UPDATE slide SET state = 'amending' WHERE slide_id = ?", (slide_id,))
                db.execute(
                    "INSERT INTO audit (slide_id, time, operator, action, note) VALUES (?, ?, ?, 'amend', ?)",
                    (slide_id, t, operator, amend_reason.strip()),  # type: ignore[union-attr]
                )
            for change in changes:
                machine = by_id[change.cell_id].machine_tray
                db.execute(
                    "UPDATE cell SET label = ? WHERE slide_id = ? AND cell_id = ?",
                    (None if change.new == machine else change.new, slide_id, change.cell_id),
                )
                db.execute(
                    "INSERT INTO audit (slide_id, time, operator, action, cell_id, old, new) "
                    "VALUES (?, ?, ?, 'reclassify', ?, ?, ?)",
                    (slide_id, t, operator, change.cell_id, change.old, change.new),
                )
        log.info("slide %s: %s moved %d cell(s) to %s", slide_id, operator, len(changes), to)
        self._announce(slide_id, operator, changes, amendment=record.state != "finished")
        return changes

    def _announce(self, slide_id: str, operator: str, changes: list[ChangeOut], amendment: bool) -> None:
        if self.send is None or self.topics is None:
            return
        record = self.store.slide(slide_id)
        cells = self.store.cells(slide_id)
        machine, reviewed = recount(record, cells, reviewed=False), recount(record, cells, reviewed=True)
        message = self._factory(record).review(
            as_slide(record),
            operator=operator,
            changes=changes,
            amendment=amendment,
            machine_counts=dict(machine.counts),
            reviewed_counts=dict(reviewed.counts),
            countable=reviewed.denominator,
        )
        self.send(self.topics.slide_topic(slide_id, "review"), message, False)

    def sign(self, slide_id: str, operator: str, pin: str) -> SignedReportMessage:
        """The reviewed report becomes final (or a new amended version), under the operator's PIN."""
        if not self.operators.verify(operator, pin):
            raise ReviewError("name or PIN not accepted (five wrong PINs lock the name for five minutes)")
        record = self.store.slide(slide_id)
        if record.state not in ("finished", "amending"):
            why = "already signed; change a cell to amend it" if record.state == "signed" else record.state
            raise ReviewError(f"slide {slide_id} cannot be signed: {why}")
        cells = self.store.cells(slide_id)
        version = record.signed_version + 1
        reason = None
        if version > 1:
            amends = [a for a in self.store.audit(slide_id) if a["action"] == "amend"]
            reason = amends[-1]["note"] if amends else None
        t = now()
        signing = {"time": t, "operator": operator, "action": "sign", "cell_id": None, "old": None, "new": None}
        signing["note"] = f"version {version}"
        audit = [
            AuditOut.model_validate({k: v for k, v in a.items() if k != "id"})
            for a in [*self.store.audit(slide_id), signing]
        ]
        machine, reviewed = recount(record, cells, reviewed=False), recount(record, cells, reviewed=True)
        message = self._factory(record).signed(
            as_slide(record),
            reviewed,
            version,
            status="final" if version == 1 else "amended",
            operator=operator,
            signed_at=t,
            reason=reason,
            machine_counts=dict(machine.counts),
            cells_reviewed=sum(c.label is not None for c in cells),
            audit=audit,
        )
        with self.store.transaction() as db:
            state = db.execute("SELECT state FROM slide WHERE slide_id = ?", (slide_id,)).fetchone()[0]
            if state != record.state:
                raise ReviewError(f"slide {slide_id} changed meanwhile ({record.state} -> {state}); reload it")
            db.execute(
                "INSERT INTO audit (slide_id, time, operator, action, note) VALUES (?, ?, ?, 'sign', ?)",
                (slide_id, t, operator, signing["note"]),
            )
            db.execute(
                "INSERT INTO signoff (slide_id, version, operator, time, reason, report) VALUES (?, ?, ?, ?, ?, ?)",
                (slide_id, version, operator, t, reason, message.model_dump_json(by_alias=True)),
            )
            db.execute("UPDATE slide SET state = 'signed' WHERE slide_id = ?", (slide_id,))
        log.info("slide %s signed by %s (version %d)", slide_id, operator, version)
        self.resend()
        for hook in self.on_signed:
            hook(slide_id, version)
        return message

    def resend(self) -> int:
        """Publish every signed report the broker has not acknowledged yet (after a sign-off or a reconnect)."""
        if self.send is None or self.topics is None:
            return 0
        sent = 0
        for slide_id, version in self.store.unpublished():
            signoff = next(s for s in self.store.signoffs(slide_id) if s["version"] == version)
            message = SignedReportMessage.model_validate(signoff["report"])
            if self.send(self.topics.slide_topic(slide_id, "signed"), message, True):
                self.store.mark_published(slide_id, version)
                sent += 1
        return sent


def _summary(tally: Any) -> dict[str, Any]:
    return {
        "counts": dict(Counter(tally.counts)),
        "countable": tally.denominator,
        "not_countable": tally.not_countable,
        "flagged": tally.flagged,
        "shares": [
            {"class": s.name, "count": s.count, "percent": s.percent, "ci": list(s.ci_percent)} for s in tally.shares()
        ],
        "rules": [
            {
                "id": r.id,
                "label": r.label,
                "class": r.class_name,
                "threshold": r.threshold_percent,
                "state": r.state,
                "percent": r.percent,
                "note": r.note,
            }
            for r in tally.rule_states()
        ],
    }


__all__ = ["NOT_COUNTABLE", "ReviewDesk", "ReviewError", "SignedError"]
