"""A SQLite file for state that must survive a crash: the outbox and the slide journal."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_durable(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating folder and tables) in WAL mode with ``synchronous=FULL``: a committed row is
    on disk when the call returns. Autocommit; one connection shared by threads under the caller's lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db
