"""Retention of the slide store (``review.keep_days``): old slides go, never a signed one the broker or
the LIS has not taken, and nothing when the clock looks wrong."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from edge.review import schema
from edge.review.records import now

log = logging.getLogger(__name__)


class Store(Protocol):
    """What retention needs of the slide store (not the class itself: the store calls retention)."""

    path: Path

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...


def purge(store: Store, keep_days: float) -> int:
    """Delete slides started more than ``keep_days`` ago, with everything kept for them; each is
    first written into ``purged`` (the triggers let only such a slide's audit and sign-offs go).

    Never deleted: a signed slide whose report the broker has not acknowledged or the LIS has not
    taken, and nothing at all when the clock looks wrong (behind the newest slide, or so far past
    it that every slide would go: a clock that jumped, not a lab that stopped counting)."""
    t = dt.datetime.now(dt.timezone.utc)
    cutoff = (t - dt.timedelta(days=keep_days)).isoformat()
    with store.transaction() as db:
        newest = db.execute("SELECT MAX(started) FROM slide").fetchone()[0]
        if newest is not None and not _clock_plausible(newest, t, keep_days):
            log.warning(
                "slide store %s: the clock (%s) is behind or far past the newest slide (%s): retention "
                "deletes nothing until it is right",
                store.path, t.isoformat(timespec="seconds"), newest,
            )  # fmt: skip
            return 0
        undelivered = "SELECT slide_id FROM signoff WHERE published = 0"
        if schema.has_table(db, "lis_outbox"):
            undelivered += " UNION SELECT slide_id FROM lis_outbox WHERE state != 'delivered'"
        old = db.execute(
            f"SELECT slide_id, specimen_id, started, state FROM slide WHERE started < ? "
            f"AND slide_id NOT IN ({undelivered})",  # fixed SQL text
            (cutoff,),
        ).fetchall()
        for slide_id, specimen_id, started, state in old:
            db.execute(
                "INSERT OR IGNORE INTO purged (slide_id, specimen_id, started, state, time, reason) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (slide_id, specimen_id, started, state, now(), f"review.keep_days {keep_days:g}"),
            )
            for table in ("cell", "field", "audit", "signoff", "slide"):
                db.execute(f"DELETE FROM {table} WHERE slide_id = ?", (slide_id,))  # fixed column/table names
    if old:
        log.warning(
            "slide store %s: retention (review.keep_days %g) deleted %d slide(s): %s",
            store.path, keep_days, len(old), ", ".join(f"{r[0]} ({r[1] or '-'}, {r[3]})" for r in old),
        )  # fmt: skip
    return len(old)


def _clock_plausible(newest: str, t: dt.datetime, keep_days: float) -> bool:
    newest_t = dt.datetime.fromisoformat(newest)
    newest_t = newest_t if newest_t.tzinfo else newest_t.replace(tzinfo=dt.timezone.utc)
    return newest_t <= t + dt.timedelta(hours=1) and t - newest_t < dt.timedelta(days=keep_days)
