"""The slide journal: the open slide's fields on disk, so a crash or a restart resumes the slide.

SQLite (WAL, ``synchronous=FULL``). Every counted field is written (with its cells) before its
messages are published; a skipped field too. At start, an open slide is resumed: same slide id
and specimen, the tally rebuilt from the journal, and a field already in it (same source
name) is not counted again. A slide is closed when its report is published.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from pathlib import Path

import numpy as np

from edge.analysis.field import Cell, FieldResult
from edge.counting.tally import Slide, Tally
from edge.durable import open_durable

log = logging.getLogger(__name__)


class SlideJournal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_durable(
            self.path,
            "CREATE TABLE IF NOT EXISTS slide (slide_id TEXT PRIMARY KEY, specimen_id TEXT, started TEXT NOT NULL, "
            "closed INTEGER NOT NULL DEFAULT 0);"
            "CREATE TABLE IF NOT EXISTS field (slide_id TEXT NOT NULL, source TEXT NOT NULL, result TEXT, "
            "skipped TEXT, PRIMARY KEY (slide_id, source));",
        )

    def open_slide(self) -> Slide | None:
        with self._lock:
            row = self._db.execute(
                "SELECT slide_id, specimen_id, started FROM slide WHERE closed = 0 ORDER BY started DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        return Slide(slide_id=row[0], specimen_id=row[1], started=dt.datetime.fromisoformat(row[2]))

    def begin(self, slide: Slide) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO slide (slide_id, specimen_id, started) VALUES (?, ?, ?)",
                (slide.slide_id, slide.specimen_id, slide.started.isoformat()),
            )

    def seen(self, slide: Slide) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT source FROM field WHERE slide_id = ?", (slide.slide_id,)).fetchall()
        return {r[0] for r in rows}

    def record(self, slide: Slide, result: FieldResult) -> None:
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
        with self._lock:
            self._db.execute(
                "INSERT INTO field (slide_id, source, result) VALUES (?, ?, ?)",
                (slide.slide_id, result.source, json.dumps(payload)),
            )

    def record_skip(self, slide: Slide, source: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO field (slide_id, source, skipped) VALUES (?, ?, ?)",
                (slide.slide_id, source, reason),
            )

    def replay(self, slide: Slide, tally: Tally) -> int:
        """Rebuild ``tally`` from the journal; the number of fields it held."""
        with self._lock:
            rows = self._db.execute(
                "SELECT source, result, skipped FROM field WHERE slide_id = ? ORDER BY rowid", (slide.slide_id,)
            ).fetchall()
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
            tally.add(FieldResult(data["index"], source, data["width"], data["height"], cells))
        return len(rows)

    def close_slide(self, slide: Slide) -> None:
        with self._lock:
            self._db.execute("UPDATE slide SET closed = 1 WHERE slide_id = ?", (slide.slide_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
