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

from edge.mqtt.factory import MessageFactory
from edge.mqtt.messages import AuditOut, ChangeOut, Provenance, SignedReportMessage
from edge.mqtt.topics import Topics
from edge.review import audit, schema
from edge.review.operators import LOCK_MINUTES, Operators
from edge.review.records import NOT_COUNTABLE, ReviewError, now
from edge.review.recount import as_slide, recount, trays
from edge.review.store import SlideStore

log = logging.getLogger(__name__)

# topic, message, retain -> acknowledged by the broker
Send = Callable[[str, BaseModel, bool], bool]

REVIEWABLE = ("finished", "signed", "amending")


class SignedError(ReviewError):
    """A change to a signed slide without saying it is an amendment and why."""


class StaleError(ReviewError):
    """A sign-off of a slide that changed since the operator looked at it."""


class PinError(ReviewError):
    """The PIN does not belong to the name (or the name is locked)."""


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
        lis = self._lis_states()
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
                    "lis": lis.get(r.slide_id),
                }
            )
        return out

    def _lis_states(self) -> dict[str, str]:
        """Slide id -> LIS delivery state of its newest signed version, in one query (the history)."""
        with self.store.reading() as db:
            if not schema.has_table(db, "lis_outbox"):
                return {}
            rows = db.execute("SELECT slide_id, state FROM lis_outbox ORDER BY version").fetchall()
        return dict(rows)  # ordered by version: the newest version's state is the one kept

    def lis_state(self, slide_id: str) -> dict[str, Any] | None:
        """The LIS delivery of the slide's newest signed version (None: no LIS set up, or not queued)."""
        with self.store.reading() as db:
            if not schema.has_table(db, "lis_outbox"):
                return None
            row = db.execute(
                "SELECT version, state, attempts, last_error, queued FROM lis_outbox WHERE slide_id = ? "
                "ORDER BY version DESC LIMIT 1",
                (slide_id,),
            ).fetchone()
        return dict(zip(("version", "state", "attempts", "last_error", "queued"), row, strict=True)) if row else None

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
                "lis": self.lis_state(slide_id),
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
            "revision": self.store.revision(slide_id),
            "signoffs": [{k: v for k, v in s.items() if k != "report"} for s in self.store.signoffs(slide_id)],
        }

    # -- changing ----------------------------------------------------------------------------
    def reclassify(
        self, slide_id: str, cell_ids: list[int], to: str, operator: str, amend_reason: str | None = None
    ) -> list[ChangeOut]:
        """Move cells to class or tray ``to``; a signed slide only as an amendment with its reason.
        Every ``old`` in the audit is read in the transaction that writes the change."""
        if not cell_ids:
            raise ReviewError(f"slide {slide_id}: no cell given")
        t = now()
        with self.store.transaction() as db:
            record = self.store.slide(slide_id, db)
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
            by_id = {c.cell_id: c for c in self.store.cells(slide_id, db)}
            missing = [i for i in cell_ids if i not in by_id]
            if missing:
                raise ReviewError(f"slide {slide_id} has no cell {missing[0]}")
            changes = [
                ChangeOut(cell_id=i, field_index=by_id[i].field_index, old=by_id[i].tray, new=to)
                for i in dict.fromkeys(cell_ids)
                if by_id[i].tray != to
            ]
            if not changes:
                return []
            if record.state == "signed":
                db.execute("UPDATE slide SET state = 'amending' WHERE slide_id = ?", (slide_id,))
                audit.append(db, slide_id, t, operator, "amend", note=amend_reason.strip())  # type: ignore[union-attr]
            for change in changes:
                machine = by_id[change.cell_id].machine_tray
                db.execute(
                    "UPDATE cell SET label = ? WHERE slide_id = ? AND cell_id = ?",
                    (None if change.new == machine else change.new, slide_id, change.cell_id),
                )
                audit.append(db, slide_id, t, operator, "reclassify", change.cell_id, change.old, change.new)
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

    def sign(
        self, slide_id: str, operator: str, pin: str, revision: int | None = None, from_session: bool = False
    ) -> SignedReportMessage:
        """The reviewed report becomes final (or a new amended version), under the operator's PIN.

        The counts are computed from the cells inside the transaction that writes the sign-off, so
        the signed report is the store's state at that instant; ``revision`` (the one the operator
        reviewed) refuses a slide changed since. ``from_session``: the operator is signed in, the PIN
        is checked without the name's login lock."""
        if not self.operators.verify(operator, pin, count=not from_session):
            raise PinError(f"name or PIN not accepted (wrong PINs in a row lock the name for {LOCK_MINUTES} minutes)")
        t = now()
        with self.store.transaction() as db:
            record = self.store.slide(slide_id, db)
            if record.state not in ("finished", "amending"):
                why = "already signed; change a cell to amend it" if record.state == "signed" else record.state
                raise ReviewError(f"slide {slide_id} cannot be signed: {why}")
            now_revision = self.store.revision(slide_id, db)
            if revision is not None and revision != now_revision:
                raise StaleError(
                    f"slide {slide_id} changed since you opened it (revision {revision} -> {now_revision}): "
                    "reload it and check the counts before signing"
                )
            cells = self.store.cells(slide_id, db)
            version = record.signed_version + 1
            trail = self.store.audit(slide_id, db)
            amends = [a for a in trail if a["action"] == "amend"]
            reason = amends[-1]["note"] if amends and version > 1 else None
            note = f"version {version}"
            signing = {"time": t, "operator": operator, "action": "sign", "cell_id": None, "old": None, "new": None}
            entries = [*trail, {**signing, "note": note}]
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
                audit=[AuditOut.model_validate({k: v for k, v in a.items() if k != "id"}) for a in entries],
            )
            audit.append(db, slide_id, t, operator, "sign", note=note)
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


__all__ = ["NOT_COUNTABLE", "PinError", "ReviewDesk", "ReviewError", "SignedError", "StaleError"]
