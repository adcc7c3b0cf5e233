"""The audit trail as a hash chain: each row of a slide carries the hash of the row before it.

A row changed, inserted or removed after it was written breaks the chain at that row, and a signed
report whose embedded audit differs from the chain no longer matches it: ``marrow-edge review
verify`` walks every slide and says where. The chain is per slide, so retention can remove a whole
slide without touching the chains of the others.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
FIELDS = ("slide_id", "time", "operator", "action", "cell_id", "old", "new", "note")


def row_hash(previous: str, values: tuple[Any, ...]) -> str:
    text = json.dumps([previous, *values], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def append(
    db: sqlite3.Connection,
    slide_id: str,
    time: str,
    operator: str,
    action: str,
    cell_id: int | None = None,
    old: str | None = None,
    new: str | None = None,
    note: str | None = None,
) -> None:
    """One audit row, chained to the slide's last (call inside the transaction that makes the change)."""
    last = db.execute("SELECT hash FROM audit WHERE slide_id = ? ORDER BY id DESC LIMIT 1", (slide_id,)).fetchone()
    values = (slide_id, time, operator, action, cell_id, old, new, note)
    db.execute(
        "INSERT INTO audit (slide_id, time, operator, action, cell_id, old, new, note, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*values, row_hash(last[0] if last else GENESIS, values)),
    )


def seal(db: sqlite3.Connection) -> None:
    """Chain rows written before the chain existed (a migration: they are taken as they are)."""
    previous: dict[str, str] = {}
    rows = db.execute(f"SELECT id, {', '.join(FIELDS)}, hash FROM audit ORDER BY id").fetchall()
    for row in rows:
        values, stored = tuple(row[1:-1]), row[-1]
        h = stored or row_hash(previous.get(values[0], GENESIS), values)
        if stored is None:
            db.execute("UPDATE audit SET hash = ? WHERE id = ?", (h, row[0]))
        previous[values[0]] = h


@dataclass(frozen=True)
class Break:
    slide_id: str
    where: str  # which row or sign-off
    why: str

    def __str__(self) -> str:
        return f"slide {self.slide_id}: {self.where}: {self.why}"


def verify(db: sqlite3.Connection, slide_id: str | None = None) -> tuple[int, list[Break]]:
    """(audit rows checked, where the chain or a sign-off breaks); the first break of each slide only."""
    query = f"SELECT id, {', '.join(FIELDS)}, hash FROM audit"
    rows = db.execute(query + (" WHERE slide_id = ? ORDER BY id" if slide_id else " ORDER BY id"),
                      (slide_id,) if slide_id else ()).fetchall()  # fmt: skip
    chains: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        chains.setdefault(row[1], []).append(row)
    slides = [slide_id] if slide_id else [r[0] for r in db.execute("SELECT slide_id FROM slide ORDER BY started")]
    breaks: list[Break] = []
    for sid in slides:
        chain = chains.get(sid, [])
        broken = _walk(sid, chain)
        if broken is None:
            broken = _signoffs(db, sid, chain)
        if broken is not None:
            breaks.append(broken)
    return len(rows), breaks


def _walk(slide_id: str, chain: list[tuple[Any, ...]]) -> Break | None:
    previous = GENESIS
    for row in chain:
        values, stored = tuple(row[1:-1]), row[-1]
        if stored != row_hash(previous, values):
            return Break(
                slide_id,
                f"audit row {row[0]} ({row[4]} by {row[3]} at {row[2]})",
                "does not match the chain: this row, or one before it, was changed, inserted or removed",
            )
        previous = stored
    return None


def _signoffs(db: sqlite3.Connection, slide_id: str, chain: list[tuple[Any, ...]]) -> Break | None:
    """Each signed version has its sign row, and the report it froze lists the chain up to that row."""
    signs = {row[8]: i for i, row in enumerate(chain) if row[4] == "sign"}  # note: 'version N'
    for version, report in db.execute(
        "SELECT version, report FROM signoff WHERE slide_id = ? ORDER BY version", (slide_id,)
    ):
        where = f"signed version {version}"
        end = signs.get(f"version {version}")
        if end is None:
            return Break(slide_id, where, "has no sign row in the audit trail")
        embedded = [_entry(a) for a in json.loads(report).get("audit", [])]
        if embedded != [_entry(dict(zip(FIELDS, row[1:-1], strict=True))) for row in chain[: end + 1]]:
            return Break(slide_id, where, "its report's audit differs from the audit trail")
    return None


def _entry(a: dict[str, Any]) -> tuple[Any, ...]:
    time = dt.datetime.fromisoformat(str(a["time"]).replace("Z", "+00:00"))
    return (time, a["operator"], a["action"], a.get("cell_id"), a.get("old"), a.get("new"), a.get("note"))
