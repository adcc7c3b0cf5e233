"""Signed reports to the lab's information system: HL7 v2 over MLLP (or a drop folder), loss-free.

Every signed version of a slide gets one row in the ``lis_outbox`` table of the slide store (a
sweep finds sign-offs without one, so a crash between signing and queueing loses nothing); rows
leave in order and are marked delivered only when the LIS answers AA/CA (or the file is in the
drop folder). A LIS that is down, slow, or answers AE/CE is retried every ``retry_s``; an AR/CR
(the LIS refuses the message itself) is kept, marked rejected, logged as an error and not
retried, since the same message would be refused again. Nothing is ever deleted here: the
table is the delivery log (``marrow-edge report --lis-log``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from edge.reports.content import load_report
from edge.reports.hl7v2 import END, START, Parties, control_id, frame, parse_ack, to_oru
from edge.review.records import now
from edge.review.schema import has_table
from edge.review.store import SlideStore

log = logging.getLogger(__name__)

TABLE = """CREATE TABLE IF NOT EXISTS lis_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, slide_id TEXT NOT NULL, version INTEGER NOT NULL, control_id TEXT NOT NULL,
    message TEXT NOT NULL, queued TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL
    DEFAULT 0, last_error TEXT, delivered TEXT, next_attempt TEXT, UNIQUE (slide_id, version))"""
MAX_ATTEMPTS = 12  # a message the LIS refused this often is 'failed': shown, and sent again only when asked
MAX_BACKOFF_S = 3600.0


class LisError(Exception):
    """One delivery attempt of one message failed (the row stays pending, retried later)."""


class LisUnreachable(LisError):
    """The LIS cannot be reached at all: no message can go now, none is to blame."""


class SenderBusy(Exception):
    """Another process holds this store's LIS sender lock (a running display sends)."""


@dataclass(frozen=True)
class Target:
    host: str | None = None
    port: int = 2575
    drop_folder: Path | None = None
    timeout_s: float = 10.0

    def __str__(self) -> str:
        return f"mllp://{self.host}:{self.port}" if self.host else f"folder {self.drop_folder}"


def send_mllp(host: str, port: int, message: str, timeout_s: float) -> str:
    """Send one framed message and return the LIS's reply (unframed). Raises LisError."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            conn.sendall(frame(message))
            reply = b""
            while not reply.endswith(END):
                chunk = conn.recv(65536)
                if not chunk:
                    raise LisError(f"the LIS at {host}:{port} closed the connection without an ACK")
                reply += chunk
                if len(reply) > 1 << 20:
                    raise LisError(f"the LIS at {host}:{port} sent over 1 MiB without an MLLP end block")
    except ConnectionRefusedError as exc:
        raise LisUnreachable(f"cannot reach the LIS at {host}:{port}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise LisError(f"cannot deliver to the LIS at {host}:{port}: {exc.strerror or exc}") from None
    start = reply.find(START)
    return reply[start + 1 : -len(END)].decode("utf-8", "replace")


class LisLink:
    def __init__(
        self,
        store: SlideStore,
        target: Target,
        parties: Parties | None = None,
        loinc: dict[str, str] | None = None,
        retry_s: float = 30.0,
    ) -> None:
        self.store = store
        self.target = target
        self.parties = parties or Parties()
        self.loinc = loinc
        self.retry_s = retry_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        with store.transaction() as db:
            db.execute(TABLE)
            columns = {row[1] for row in db.execute("PRAGMA table_info(lis_outbox)")}
            if "next_attempt" not in columns:
                db.execute("ALTER TABLE lis_outbox ADD COLUMN next_attempt TEXT")

    # -- one sender per store ----------------------------------------------------------------
    def acquire(self) -> bool:
        """Become this store's one sender (a file lock beside the store); False: another process is."""
        if self._lock_fd is not None:
            return True
        fd = os.open(f"{self.store.path}.lis.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- queueing ----------------------------------------------------------------------------
    def queue(self, slide_id: str, version: int, again: bool = False) -> str:
        """Put one signed version in the outbox (once: a second call changes nothing, unless ``again``
        sends a rejected or failed one anew). The control id."""
        report = load_report(self.store, slide_id, version)
        message = to_oru(report, self.parties, self.loinc)
        with self.store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO lis_outbox (slide_id, version, control_id, message, queued) "
                "VALUES (?, ?, ?, ?, ?)",
                (slide_id, version, control_id(report), message, now()),
            )
            if again:
                db.execute(
                    "UPDATE lis_outbox SET state = 'pending', attempts = 0, next_attempt = NULL "
                    "WHERE slide_id = ? AND version = ? AND state IN ('rejected', 'failed')",
                    (slide_id, version),
                )
            row = db.execute(
                "SELECT control_id FROM lis_outbox WHERE slide_id = ? AND version = ?", (slide_id, version)
            ).fetchone()
        return row[0]

    def sweep(self) -> int:
        """Queue every signed version that has no outbox row yet."""
        with self.store.transaction() as db:
            missing = db.execute(
                "SELECT s.slide_id, s.version FROM signoff s LEFT JOIN lis_outbox o "
                "ON o.slide_id = s.slide_id AND o.version = s.version WHERE o.id IS NULL ORDER BY s.time"
            ).fetchall()
        for slide_id, version in missing:
            self.queue(slide_id, version)
        return len(missing)

    # -- delivering --------------------------------------------------------------------------
    def deliver(self) -> int:
        """Send every pending row that is due, oldest first; the number delivered. A message the LIS
        refuses waits for its own next attempt (backoff, at most MAX_ATTEMPTS) and never holds up the
        patients after it; an unreachable LIS ends the round. Raises SenderBusy when another process
        is this store's sender."""
        if not self.acquire():
            raise SenderBusy(f"another process sends this store's reports to {self.target}")
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT id, slide_id, version, control_id, message, attempts FROM lis_outbox WHERE state = 'pending' "
                "AND (next_attempt IS NULL OR next_attempt <= ?) ORDER BY id",
                (dt.datetime.now(dt.timezone.utc).isoformat(),),
            ).fetchall()
        delivered = 0
        for row_id, slide_id, version, cid, message, attempts in rows:
            try:
                outcome = self._send(cid, message)
            except LisUnreachable as exc:
                self._note(row_id, str(exc))
                log.warning("LIS: %s; retrying in %gs", exc, self.retry_s)
                return delivered
            except LisError as exc:
                self._failed(row_id, slide_id, version, attempts + 1, str(exc))
                continue
            if outcome is None:
                self._mark(row_id, "delivered", None)
                delivered += 1
                log.info("LIS: slide %s v%d delivered to %s (%s)", slide_id, version, self.target, cid)
            else:
                self._mark(row_id, "rejected", outcome)
                log.error(
                    "LIS: slide %s v%d REJECTED by %s: %s (kept; sent again only when asked: report --send)",
                    slide_id, version, self.target, outcome,
                )  # fmt: skip
        return delivered

    def _failed(self, row_id: int, slide_id: str, version: int, attempts: int, error: str) -> None:
        if attempts >= MAX_ATTEMPTS:
            self._mark(row_id, "failed", error)
            log.error(
                "LIS: slide %s v%d FAILED after %d attempts (%s): sent again only when asked (report --send)",
                slide_id, version, attempts, error,
            )  # fmt: skip
            return
        wait = min(self.retry_s * 2 ** (attempts - 1), MAX_BACKOFF_S)
        due = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=wait)).isoformat()
        with self.store.transaction() as db:
            db.execute(
                "UPDATE lis_outbox SET attempts = ?, last_error = ?, next_attempt = ? WHERE id = ?",
                (attempts, error, due, row_id),
            )
        log.warning("LIS: slide %s v%d not delivered (%s); attempt %d, next in %gs", slide_id, version, error,
                    attempts, wait)  # fmt: skip

    def _note(self, row_id: int, error: str) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE lis_outbox SET last_error = ? WHERE id = ?", (error, row_id))

    def backlog(self) -> dict[str, int | None]:
        return lis_backlog(self.store)

    def _send(self, cid: str, message: str) -> str | None:
        """None: accepted. A string: the LIS rejected it (why). Raises LisError to retry."""
        t = self.target
        if t.drop_folder is not None:
            _write_atomically(t.drop_folder / f"{cid}.hl7", message.encode("utf-8"))
            return None
        assert t.host is not None
        reply = send_mllp(t.host, t.port, message, t.timeout_s)
        try:
            ack = parse_ack(reply)
        except ValueError as exc:
            raise LisError(str(exc)) from None
        if ack.control_id != cid:
            raise LisError(f"the ACK answers {ack.control_id!r}, not {cid!r}")
        if ack.accepted:
            return None
        if ack.rejected:
            return f"{ack.code} {ack.text}".strip()
        raise LisError(f"the LIS answered {ack.code} {ack.text}".strip())

    def _mark(self, row_id: int, state: str, error: str | None) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE lis_outbox SET state = ?, attempts = attempts + 1, last_error = ?, delivered = ? WHERE id = ?",
                (state, error, now() if state == "delivered" else None, row_id),
            )

    def log_rows(self) -> list[dict[str, object]]:
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT slide_id, version, control_id, queued, state, attempts, last_error, delivered, next_attempt "
                "FROM lis_outbox ORDER BY id"
            ).fetchall()
        keys = ("slide_id", "version", "control_id", "queued", "state", "attempts", "last_error", "delivered",
                "next_attempt")  # fmt: skip
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- the background sender ---------------------------------------------------------------
    def wake(self, *_: object) -> None:
        """Something was signed: look now rather than at the next retry."""
        self._wake.set()

    def start(self) -> LisLink:
        self._thread = threading.Thread(target=self._run, name="lis-link", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.target.timeout_s + 5)
        self.release()

    def _run(self) -> None:
        log.info("LIS link to %s started", self.target)
        while not self._stop.is_set():
            try:
                self.sweep()
                if self.acquire():
                    self.deliver()
            except Exception:  # the link must outlive one bad row or a locked store
                log.exception("LIS link: delivery round failed")
            self._wake.wait(self.retry_s)
            self._wake.clear()


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # the LIS never sees half a file
    except OSError as exc:
        raise LisError(f"cannot write {path}: {exc.strerror or exc}") from None


def lis_backlog(store: SlideStore) -> dict[str, int | None]:
    """What waits: pending, rejected (or failed) and the age of the oldest undelivered row, in seconds."""
    with store.reading() as db:
        if not has_table(db, "lis_outbox"):
            rows = []
        else:
            rows = db.execute("SELECT state, queued FROM lis_outbox WHERE state != 'delivered'").fetchall()
    t = dt.datetime.now(dt.timezone.utc)
    ages = [(t - dt.datetime.fromisoformat(q)).total_seconds() for _, q in rows]
    return {
        "pending": sum(s == "pending" for s, _ in rows),
        "rejected": sum(s in ("rejected", "failed") for s, _ in rows),
        "oldest_s": round(max(ages)) if ages else None,
    }
