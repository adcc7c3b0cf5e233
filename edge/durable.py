"""A SQLite file for state that must survive a crash: the outbox and the slide journal.

Storage trouble (a full disk, a read-only state directory, a folder or a foreign file where the
database should be, a second run on the same file) is a one-line error naming the path, never
a traceback: :class:`StorageError` (exit 3).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from edge.errors import StorageError

__all__ = ["StorageError", "open_durable", "storage"]


def _explain(path: Path, exc: sqlite3.Error | OSError) -> str:
    text = str(exc)
    if isinstance(exc, OSError):
        text = exc.strerror or text
    if "not a database" in text:
        return f"{path} is not an SQLite database (a foreign file): move it away or choose another path"
    if "full" in text:
        return f"{path}: the disk is full ({text}); free space in {path.parent}"
    if "readonly" in text or "read-only" in text or "Permission denied" in text:
        return f"{path}: cannot write ({text}); the state directory {path.parent} must be writable"
    if path.is_dir():
        return f"{path} is a directory; give a file path"
    return f"{path}: {text}"


@contextlib.contextmanager
def storage(path: Path) -> Iterator[None]:
    """Turn SQLite and OS errors on ``path`` into a StorageError naming it."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(_explain(path, exc)) from None


class DurableConnection(sqlite3.Connection):
    """A connection that holds its file's lock until it is closed."""

    lock_fd: int | None = None

    def close(self) -> None:
        super().close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the flock
            self.lock_fd = None


def open_durable(path: Path, schema: str) -> DurableConnection:
    """Open (creating folder and tables) in WAL mode with ``synchronous=FULL``: a committed row is
    on disk when the call returns. Autocommit; one connection shared by threads under the caller's lock.
    One process at a time: a second run on the same file is refused (its rows would collide)."""
    path = Path(path)
    with storage(path):
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise StorageError(f"{path} is in use by another marrow-edge run; one run per file") from None
        try:
            db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, factory=DurableConnection)
            db.lock_fd = lock
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(schema)
        except BaseException:
            os.close(lock)
            raise
    return db
