"""The slide journal: the open slide's fields on disk, so a crash or a restart resumes the slide.

SQLite (WAL, ``synchronous=FULL``). Every counted field is written (with its cells) before its
messages are published; a skipped field too. At start, an open slide is resumed only when it is
the same slide: the same specimen and source, or an explicit ``--resume`` (another patient's
cells must never be added to it: :func:`resolve_open_slide`); then the tally is rebuilt from
the journal, and a field already in it (same source name) is not counted again. A slide is
closed when its report is published, or closed as interrupted when the operator says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge.analysis.field import Cell, FieldResult, FieldScale
from edge.counting.tally import Slide, Tally
from edge.durable import open_durable, storage
from edge.errors import ConfigError

log = logging.getLogger(__name__)


class SlideJournal:
    def __init__(self, path: Path, keep_days: float | None = None) -> None:
        self.path = Path(path)
        self._mutex = threading.Lock()
        self._db = open_durable(
            self.path,
            "CREATE TABLE IF NOT EXISTS slide (slide_id TEXT PRIMARY KEY, specimen_id TEXT, started TEXT NOT NULL, "
            "closed INTEGER NOT NULL DEFAULT 0);"
            "CREATE TABLE IF NOT EXISTS field (slide_id TEXT NOT NULL, source TEXT NOT NULL, result TEXT, "
            "skipped TEXT, PRIMARY KEY (slide_id, source));"
            "CREATE TABLE IF NOT EXISTS gate (slide_id TEXT PRIMARY KEY, state TEXT NOT NULL);",
        )
        with self._lock():
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(slide)")}
            if "source" not in columns:  # journals written before the source was recorded
                self._db.execute("ALTER TABLE slide ADD COLUMN source TEXT")
            if "retained_cleared" not in columns:  # the broker's retained copies of old slides, cleared
                self._db.execute("ALTER TABLE slide ADD COLUMN retained_cleared INTEGER NOT NULL DEFAULT 0")
        if keep_days is not None:
            self.purge(keep_days)

    def purge(self, keep_days: float) -> int:
        """Delete closed slides (and their fields) started more than ``keep_days`` ago: the journal
        is for resuming, not an archive, and must not grow forever. Open slides are never deleted."""
        cutoff = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=keep_days)).isoformat()
        with self._lock():
            old = [
                r[0]
                for r in self._db.execute("SELECT slide_id FROM slide WHERE closed != 0 AND started < ?", (cutoff,))
            ]
            for slide_id in old:
                self._db.execute("DELETE FROM field WHERE slide_id = ?", (slide_id,))
                self._db.execute("DELETE FROM slide WHERE slide_id = ?", (slide_id,))
        if old:
            log.info("journal %s: %d closed slide(s) older than %g days deleted", self.path, len(old), keep_days)
        return len(old)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One thread at a time; a full disk or a broken file is a StorageError naming the journal."""
        with self._mutex, storage(self.path):
            yield

    def open_slide(self) -> Slide | None:
        with self._lock():
            row = self._db.execute(
                "SELECT slide_id, specimen_id, started, source FROM slide WHERE closed = 0 "
                "ORDER BY started DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        return Slide(slide_id=row[0], specimen_id=row[1], started=dt.datetime.fromisoformat(row[2]), source=row[3])

    def slide(self, slide_id: str) -> Slide | None:
        """Any slide still in the journal, open or closed (``review import`` reads a closed one)."""
        with self._lock():
            row = self._db.execute(
                "SELECT slide_id, specimen_id, started, source FROM slide WHERE slide_id = ?", (slide_id,)
            ).fetchone()
        if row is None:
            return None
        return Slide(slide_id=row[0], specimen_id=row[1], started=dt.datetime.fromisoformat(row[2]), source=row[3])

    def begin(self, slide: Slide) -> None:
        with self._lock():
            self._db.execute(
                "INSERT OR IGNORE INTO slide (slide_id, specimen_id, started, source) VALUES (?, ?, ?, ?)",
                (slide.slide_id, slide.specimen_id, slide.started.isoformat(), slide.source),
            )

    def seen(self, slide: Slide) -> set[str]:
        with self._lock():
            rows = self._db.execute("SELECT source FROM field WHERE slide_id = ?", (slide.slide_id,)).fetchall()
        return {r[0] for r in rows}

    def record(self, slide: Slide, result: FieldResult, gate_state: dict | None = None) -> None:
        """A counted field; with ``gate_state`` (a live camera) the field gate's counted-area map too,
        in the same transaction: after a restart the same stage areas are not counted again."""
        with self._lock():
            self._db.execute("BEGIN")
            try:
                self._insert_field(slide, result)
                if gate_state is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO gate (slide_id, state) VALUES (?, ?)",
                        (slide.slide_id, json.dumps(gate_state)),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise

    def _insert_field(self, slide: Slide, result: FieldResult) -> None:
        cells = [
            {
                "box": list(c.box),
                "detector_score": c.detector_score,
                "class_name": c.class_name,
                "class_probability": c.class_probability,
                "probabilities": [float(p) for p in c.probabilities],
                "p_countable": c.p_countable,
                "countable": c.countable,
                "colour": list(c.colour) if c.colour is not None else None,
            }
            for c in result.cells
        ]
        payload = {"index": result.index, "width": result.width, "height": result.height, "cells": cells}
        if result.scale is not None:
            payload["scale"] = asdict(result.scale)
        self._db.execute(
            "INSERT INTO field (slide_id, source, result) VALUES (?, ?, ?)",
            (slide.slide_id, result.source, json.dumps(payload)),
        )

    def gate_state(self, slide: Slide) -> dict | None:
        with self._lock():
            row = self._db.execute("SELECT state FROM gate WHERE slide_id = ?", (slide.slide_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def record_skip(self, slide: Slide, source: str, reason: str) -> None:
        with self._lock():
            self._db.execute(
                "INSERT OR IGNORE INTO field (slide_id, source, skipped) VALUES (?, ?, ?)",
                (slide.slide_id, source, reason),
            )

    def replay(self, slide: Slide, tally: Tally) -> list[FieldResult]:
        """Rebuild ``tally`` from the journal; the counted fields it held, in order."""
        with self._lock():
            rows = self._db.execute(
                "SELECT source, result, skipped FROM field WHERE slide_id = ? ORDER BY rowid", (slide.slide_id,)
            ).fetchall()
        results: list[FieldResult] = []
        for source, result, skipped in rows:
            if skipped is not None:
                tally.skip(source, skipped)
                continue
            data = json.loads(result)
            cells = [
                Cell(
                    box=tuple(c["box"]),  # type: ignore[arg-type]
                    detector_score=c["detector_score"],
                    class_name=c["class_name"],
                    class_probability=c["class_probability"],
                    probabilities=np.asarray(c["probabilities"], np.float32),
                    p_countable=c["p_countable"],
                    countable=c["countable"],
                    colour=tuple(c["colour"]) if c.get("colour") is not None else None,
                )
                for c in data["cells"]
            ]
            scale = FieldScale(**data["scale"]) if data.get("scale") else None
            result = FieldResult(data["index"], source, data["width"], data["height"], cells, scale=scale)
            tally.add(result)
            results.append(result)
        return results

    def close_slide(self, slide: Slide, interrupted: bool = False) -> None:
        """Closed for good: 1 after its report, 2 when closed as interrupted (never resumed)."""
        with self._lock():
            self._db.execute(
                "UPDATE slide SET closed = ? WHERE slide_id = ?", (2 if interrupted else 1, slide.slide_id)
            )

    def retained_to_clear(self, keep: int) -> list[str]:
        """Slides beyond the newest ``keep`` whose retained tally and report may still be on the broker."""
        with self._lock():
            rows = self._db.execute(
                "SELECT slide_id FROM (SELECT slide_id, retained_cleared FROM slide ORDER BY started DESC "
                "LIMIT -1 OFFSET ?) WHERE retained_cleared = 0",
                (keep,),
            ).fetchall()
        return [row[0] for row in rows]

    def mark_cleared(self, slide_ids: list[str]) -> None:
        with self._lock():
            self._db.executemany("UPDATE slide SET retained_cleared = 1 WHERE slide_id = ?", [(i,) for i in slide_ids])

    def close(self) -> None:
        with self._lock():
            self._db.close()


def resolve_open_slide(
    journal: SlideJournal,
    specimen_id: str | None,
    source: str | None,
    resume: bool = False,
    close_interrupted: bool = False,
) -> Slide | None:
    """The open slide to resume, or None to start a new one; refuses (exit 2) anything that could
    put one patient's cells into another's slide.

    Resumed: the open slide when ``resume`` is asked for (and the specimen, if given, is its own),
    or when specimen and source are both the same. ``close_interrupted`` closes it as interrupted
    first, then a new slide starts. Anything else is refused, naming the open slide and both ways out.
    """
    open_slide = journal.open_slide()
    if open_slide is None:
        return None
    if close_interrupted:
        journal.close_slide(open_slide, interrupted=True)
        log.warning(
            "slide %s (specimen %s) closed as interrupted without a report", open_slide.slide_id, open_slide.specimen_id
        )
        return None
    same_specimen = specimen_id is None if open_slide.specimen_id is None else specimen_id == open_slide.specimen_id
    if resume and (specimen_id is None or same_specimen):
        return open_slide
    if not resume and same_specimen and source is not None and source == open_slide.source:
        return open_slide
    raise ConfigError(
        f"slide {open_slide.slide_id} (specimen {open_slide.specimen_id or '-'}, source {open_slide.source or '-'}) "
        f"is still open in the journal {journal.path} after an interrupted run, and this run "
        f"(specimen {specimen_id or '-'}, source {source or '-'}) is not that slide: rerun that slide with --resume, "
        "or pass --close-interrupted to close it as interrupted and start this one"
    )
