"""The outbox: results are on disk before they are published, until the broker acknowledges them.

SQLite in WAL mode with ``synchronous=FULL``: a row written is on disk when ``put`` returns,
so a crash, a power cut or a broker outage loses nothing; rows are deleted on PUBACK and the
rest are re-sent in order after a reconnect or at the next start. Disk use is bounded: past
``max_bytes`` new messages are still kept (a count must never be dropped) but ``alarm`` is
raised for the health topic, so an operator can fix the link before the disk fills.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge.durable import open_durable


@dataclass(frozen=True)
class OutboxRow:
    row_id: int
    topic: str
    payload: bytes
    retain: bool


class Outbox:
    def __init__(self, path: Path, max_bytes: int = 512 * 2**20) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = open_durable(
            self.path,
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
            "payload BLOB NOT NULL, retain INTEGER NOT NULL, created REAL NOT NULL)",
        )

    def put(self, topic: str, payload: bytes, retain: bool) -> int:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO outbox (topic, payload, retain, created) VALUES (?, ?, ?, ?)",
                (topic, payload, int(retain), time.time()),
            )
            return int(cursor.lastrowid or 0)

    def delete(self, row_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def pending(self) -> list[OutboxRow]:
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, retain FROM outbox ORDER BY id").fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), bool(r[3])) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    @property
    def payload_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()[0])

    @property
    def alarm(self) -> bool:
        return self.payload_bytes > self.max_bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()
