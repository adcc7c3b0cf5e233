"""The slide store: every counted slide with its cells' images, reviews, sign-offs and audit trail.

One SQLite file (WAL) shared by two processes: the count path writes cells as it counts, the
display reads them and writes the technician's review. Unlike the journal (which exists to resume
a slide and is purged soon after) this is the lab's record of what the machine said, what a person
changed, who signed and when; a slide is deleted only by the retention policy (``review.keep_days``).

Images are JPEG blobs: per cell the crop as the classifier saw it (size and margin of the bundle)
and a larger context crop; per field a scaled-down view to show the cell's box in its field.
Nothing here is on the hot path's critical section: a field costs a few small JPEG encodes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.analysis.crops import crop_cells
from edge.analysis.field import FieldResult
from edge.counting.tally import Slide
from edge.durable import storage
from edge.errors import StorageError
from edge.review import retention, schema
from edge.review.records import SlideRecord, StoredCell, UnknownSlideError, flags_of

log = logging.getLogger(__name__)

def _jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def _writable(path: Path) -> bool:
    """access(2) answers for this user and for a read-only file system (EROFS, even for root)."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _open_read_only(path: Path) -> sqlite3.Connection:
    """Read a store this process may not write. Immutable only on a read-only file system without a
    WAL file: then no writer can exist and no committed change can hide in a WAL it cannot read."""
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    if os.statvfs(path).f_flag & os.ST_RDONLY and not path.with_name(path.name + "-wal").exists():
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=10.0)


class SlideStore:
    """The store file; thread-safe, and safe beside another process (the display or the count path)."""

    def __init__(
        self,
        path: Path | str,
        keep_days: float | None = None,
        max_cells_per_slide: int = 3000,
        jpeg_quality: int = 85,
        context_scale: float = 3.0,
        field_width: int = 960,
    ) -> None:
        self.path = Path(path)
        self.max_cells = max_cells_per_slide
        self.quality = jpeg_quality
        self.context_scale = context_scale
        self.field_width = field_width
        self._mutex = threading.Lock()
        self._setups: dict[str, dict[str, Any]] = {}  # a slide's setup never changes: read once, not per field
        self.read_only = self.path.is_file() and not _writable(self.path)
        with storage(self.path):
            if self.path.is_dir():
                raise IsADirectoryError(21, "Is a directory")
            if self.read_only:
                self._db = _open_read_only(self.path)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Two processes share it: no exclusive lock (unlike the journal), WAL and a busy timeout instead.
                self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
            st = self.path.stat()
            self._identity = (st.st_dev, st.st_ino)
            if not self.read_only:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                schema.create(self._db)
            else:
                self._db.execute("SELECT COUNT(*) FROM slide").fetchone()  # a foreign file fails here, clearly
        if self.read_only:
            log.warning("slide store %s is read-only here: reports and review can be read, nothing changed", path)
        elif keep_days is not None:
            self.purge(keep_days)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[sqlite3.Connection]:
        with self._mutex, storage(self.path):
            self._check_file()
            yield self._db

    def _check_file(self) -> None:
        """The file this connection writes is still the one at ``path``: a store deleted or replaced
        under a running process would take every later change into an unlinked file, lost at restart."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._identity:
            raise StorageError(
                f"the slide store {self.path} was {'deleted' if st is None else 'replaced'} while in use: "
                "nothing more is written to it; restart the service (and restore the file from its backup)"
            )

    @contextlib.contextmanager
    def reading(self, db: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """Inside a caller's transaction (``db``), or on its own."""
        if db is not None:
            yield db
        else:
            with self._lock() as own:
                yield own

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change (IMMEDIATE: the other process waits, never interleaves)."""
        if self.read_only:
            raise StorageError(f"the slide store {self.path} is read-only here: it can be read, not changed")
        with self._lock() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._mutex:  # no file check: closing a store whose file went away must still work
            self._db.close()

    # -- retention ---------------------------------------------------------------------------
    def purge(self, keep_days: float) -> int:
        """Retention (edge/review/retention.py): slides older than ``keep_days`` go, with their crops."""
        return retention.purge(self, keep_days)

    # -- the count path writes ---------------------------------------------------------------
    def begin(self, slide: Slide, setup: dict[str, Any], device_id: str | None = None) -> None:
        """A slide starts (or resumes: then nothing changes). ``setup``: what recounting needs later
        (classes with roles, rule pack, counting settings, guard calibration, crop geometry)."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO slide (slide_id, specimen_id, device_id, source, started, setup) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    slide.slide_id,
                    slide.specimen_id,
                    device_id,
                    slide.source,
                    slide.started.isoformat(),
                    json.dumps(setup),
                ),
            )

    def add_field(self, slide: Slide, result: FieldResult, image: np.ndarray | None) -> None:
        """One counted field's cells with their crops (cut from ``image``, the RGB field as counted).
        No image (a slide imported from the journal whose frames are gone): the cells without crops."""
        setup = self.setup(slide.slide_id)
        size, margin = setup["crop_size"], setup["crop_margin"]
        boxes = np.array([c.box for c in result.cells], np.float32).reshape(-1, 4)
        with self._lock() as db:
            kept = db.execute("SELECT COUNT(*) FROM cell WHERE slide_id = ?", (slide.slide_id,)).fetchone()[0]
        room = max(0, self.max_cells - kept)
        cut = image is not None and room > 0
        crops = crop_cells(image, boxes[:room], size, margin) if cut else []
        context_side = int(min(256, max(96, size * 1.5)))
        contexts = crop_cells(image, boxes[:room], context_side, self.context_scale - 1.0) if cut else []
        field_jpeg = None
        height, width = result.height, result.width
        if image is not None:
            height, width = image.shape[:2]
            scale = min(1.0, self.field_width / width)
            small = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
            field_jpeg = _jpeg(small, self.quality)
        rows = []
        for i, cell in enumerate(result.cells):
            probs = np.sort(np.asarray(cell.probabilities, np.float32))[::-1]
            margin_ = float(probs[0] - probs[1]) if len(probs) > 1 else 1.0
            data = {
                "box": [round(float(v), 1) for v in cell.box],
                "detector_score": round(float(cell.detector_score), 4),
                "class_name": cell.class_name,
                "class_probability": round(float(cell.class_probability), 4),
                "margin": round(margin_, 4),
                "probabilities": [round(float(p), 4) for p in cell.probabilities],
                "p_countable": round(float(cell.p_countable), 4),
                "countable": bool(cell.countable),
                "why_not": cell.why_not,
                "colour": [float(v) for v in cell.colour] if cell.colour is not None else None,
                "flags": flags_of(cell.countable, cell.class_probability, margin_, cell.p_countable, setup),
                "factor": result.scale.factor if result.scale is not None else None,  # for the size check
            }
            crop = _jpeg(crops[i], self.quality) if i < len(crops) else None
            context = _jpeg(contexts[i], self.quality) if i < len(contexts) else None
            rows.append((i, json.dumps(data), crop, context))
        with self.transaction() as db:
            if db.execute(
                "SELECT 1 FROM field WHERE slide_id = ? AND field_index = ?", (slide.slide_id, result.index)
            ).fetchone():
                return  # a resumed slide re-offering a field it already holds
            db.execute(
                "INSERT INTO field (slide_id, field_index, source, width, height, image) VALUES (?, ?, ?, ?, ?, ?)",
                (slide.slide_id, result.index, result.source, width, height, field_jpeg),
            )
            next_id = db.execute(
                "SELECT COALESCE(MAX(cell_id) + 1, 0) FROM cell WHERE slide_id = ?", (slide.slide_id,)
            ).fetchone()[0]
            db.executemany(
                "INSERT INTO cell (slide_id, cell_id, field_index, data, crop, context) VALUES (?, ?, ?, ?, ?, ?)",
                [(slide.slide_id, next_id + i, result.index, data, crop, ctx) for i, data, crop, ctx in rows],
            )
            dropped = len(result.cells) - min(room, len(result.cells))
            if dropped:
                db.execute(
                    "UPDATE slide SET cells_dropped = cells_dropped + ? WHERE slide_id = ?", (dropped, slide.slide_id)
                )

    def finish(self, slide: Slide, report: dict[str, Any], interrupted: bool = False) -> None:
        """The machine's final report: the slide is ready for review."""
        with self.transaction() as db:
            db.execute(
                "UPDATE slide SET state = ?, ended = ?, machine_report = ? WHERE slide_id = ? AND state = 'counting'",
                (
                    "interrupted" if interrupted else "finished",
                    (slide.ended or dt.datetime.now(dt.timezone.utc)).isoformat(),
                    json.dumps(report),
                    slide.slide_id,
                ),
            )

    # -- reading -----------------------------------------------------------------------------
    def setup(self, slide_id: str) -> dict[str, Any]:
        if slide_id not in self._setups:
            with self._lock() as db:
                row = db.execute("SELECT setup FROM slide WHERE slide_id = ?", (slide_id,)).fetchone()
            if row is None:
                raise UnknownSlideError(f"no slide {slide_id!r} in the slide store {self.path}")
            self._setups[slide_id] = json.loads(row[0])
        return self._setups[slide_id]

    def slides(self, limit: int = 200) -> list[SlideRecord]:
        with self._lock() as db:
            rows = db.execute("SELECT slide_id FROM slide ORDER BY started DESC LIMIT ?", (limit,)).fetchall()
        return [self.slide(r[0]) for r in rows]

    def slide(self, slide_id: str, db: sqlite3.Connection | None = None) -> SlideRecord:
        with self.reading(db) as db:
            row = db.execute(
                "SELECT slide_id, specimen_id, device_id, source, started, ended, state, setup, machine_report, "
                "cells_dropped FROM slide WHERE slide_id = ?",
                (slide_id,),
            ).fetchone()
            version = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM signoff WHERE slide_id = ?", (slide_id,)
            ).fetchone()[0]
        if row is None:
            raise UnknownSlideError(f"no slide {slide_id!r} in the slide store {self.path}")
        return SlideRecord(
            *row[:7],
            setup=json.loads(row[7]),
            machine_report=json.loads(row[8]) if row[8] else None,
            cells_dropped=row[9],
            signed_version=version,
        )

    def cells(self, slide_id: str, db: sqlite3.Connection | None = None) -> list[StoredCell]:
        with self.reading(db) as db:
            rows = db.execute(
                "SELECT cell_id, field_index, data, label, crop IS NOT NULL FROM cell WHERE slide_id = ? "
                "ORDER BY cell_id",
                (slide_id,),
            ).fetchall()
        out = []
        for cell_id, field_index, data, label, has_crop in rows:
            d = json.loads(data)
            out.append(
                StoredCell(
                    cell_id=cell_id,
                    field_index=field_index,
                    box=tuple(d["box"]),  # type: ignore[arg-type]
                    detector_score=d["detector_score"],
                    machine_class=d["class_name"],
                    class_probability=d["class_probability"],
                    margin=d["margin"],
                    probabilities=d["probabilities"],
                    p_countable=d["p_countable"],
                    countable=d["countable"],
                    why_not=d["why_not"],
                    colour=d["colour"],
                    factor=d.get("factor"),
                    label=label,
                    has_crop=bool(has_crop),
                    flags=d.get("flags", []),
                )
            )
        return out

    def image(self, slide_id: str, cell_id: int, kind: str) -> bytes | None:
        """A cell's ``crop`` or ``context`` JPEG."""
        column = {"crop": "crop", "context": "context"}[kind]
        with self._lock() as db:
            row = db.execute(
                f"SELECT {column} FROM cell WHERE slide_id = ? AND cell_id = ?",  # fixed column/table names
                (slide_id, cell_id),
            ).fetchone()
        return row[0] if row else None

    def fields(self, slide_id: str) -> dict[int, dict[str, Any]]:
        with self._lock() as db:
            rows = db.execute(
                "SELECT field_index, source, width, height FROM field WHERE slide_id = ?", (slide_id,)
            ).fetchall()
        return {i: {"source": s, "width": w, "height": h} for i, s, w, h in rows}

    def field_image(self, slide_id: str, field_index: int) -> tuple[bytes, int, int] | None:
        """The stored field JPEG with the field's full-resolution width and height (for the box overlay)."""
        with self._lock() as db:
            row = db.execute(
                "SELECT image, width, height FROM field WHERE slide_id = ? AND field_index = ?",
                (slide_id, field_index),
            ).fetchone()
        return (row[0], row[1], row[2]) if row and row[0] is not None else None  # imported without its frame

    def revision(self, slide_id: str, db: sqlite3.Connection | None = None) -> int:
        """Bumped by every change a person makes to the slide (each leaves an audit row)."""
        with self.reading(db) as db:
            return db.execute("SELECT COUNT(*) FROM audit WHERE slide_id = ?", (slide_id,)).fetchone()[0]

    def audit(self, slide_id: str, db: sqlite3.Connection | None = None) -> list[dict[str, Any]]:
        with self.reading(db) as db:
            rows = db.execute(
                "SELECT id, time, operator, action, cell_id, old, new, note FROM audit WHERE slide_id = ? ORDER BY id",
                (slide_id,),
            ).fetchall()
        keys = ("id", "time", "operator", "action", "cell_id", "old", "new", "note")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def signoffs(self, slide_id: str) -> list[dict[str, Any]]:
        with self._lock() as db:
            rows = db.execute(
                "SELECT version, operator, time, reason, report, published FROM signoff WHERE slide_id = ? "
                "ORDER BY version",
                (slide_id,),
            ).fetchall()
        return [
            {"version": v, "operator": o, "time": t, "reason": r, "report": json.loads(p), "published": bool(pub)}
            for v, o, t, r, p, pub in rows
        ]

    def unpublished(self) -> list[tuple[str, int]]:
        with self._lock() as db:
            return [tuple(r) for r in db.execute("SELECT slide_id, version FROM signoff WHERE published = 0")]

    def mark_published(self, slide_id: str, version: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE signoff SET published = 1 WHERE slide_id = ? AND version = ?", (slide_id, version))
