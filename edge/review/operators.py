"""The people who may review and sign: a name and a PIN (or password) set by the lab, stored hashed.

scrypt with a random salt per operator. Wrong PINs at login count in the store, and MAX_FAILURES
in a row lock the name for LOCK_MINUTES wherever the login comes from: the network-wide cap on
guessing a 4-digit PIN. The display also throttles each client address (``edge.display.auth``), so
one stranger's guesses stop that stranger long before the name locks; a PIN typed to sign from a
signed-in session is checked without the lock (the session already proved who it is).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets

from edge.review.records import ReviewError, now
from edge.review.store import SlideStore

log = logging.getLogger(__name__)

NAME = re.compile(r"^[\w .'-]{1,64}$")
MIN_PIN = 4
MAX_FAILURES = 20
LOCK_MINUTES = 5


def _hash(pin: str, salt: bytes) -> bytes:
    return hashlib.scrypt(pin.encode("utf-8"), salt=salt, n=2**14, r=8, p=1, dklen=32)


class Operators:
    def __init__(self, store: SlideStore) -> None:
        self.store = store

    def add(self, name: str, pin: str) -> None:
        """Create an operator, or set a new PIN for one."""
        if not NAME.match(name):
            raise ReviewError(f"operator name {name[:64]!r}: letters, digits, spaces and . ' - only (1-64)")
        if len(pin) < MIN_PIN:
            raise ReviewError(f"the PIN must have at least {MIN_PIN} characters")
        salt = secrets.token_bytes(16)
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO operator (name, salt, hash, created) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
                "SET salt = excluded.salt, hash = excluded.hash, failures = 0, locked_until = NULL",
                (name, salt, _hash(pin, salt), now()),
            )
        log.info("operator %s set", name)

    def remove(self, name: str) -> bool:
        with self.store.transaction() as db:
            return db.execute("DELETE FROM operator WHERE name = ?", (name,)).rowcount > 0

    def names(self) -> list[str]:
        with self.store.transaction() as db:
            return [r[0] for r in db.execute("SELECT name FROM operator ORDER BY name")]

    def _credential(self, name: str) -> tuple[bytes, bytes] | None:
        """(salt, hash) of the operator, None when there is none."""
        with self.store.reading() as db:
            row = db.execute("SELECT salt, hash FROM operator WHERE name = ?", (name,)).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row else None

    def stamp(self, name: str) -> str | None:
        """A fingerprint of the operator's credential: changes with the PIN, None once removed."""
        credential = self._credential(name)
        return hashlib.sha256(b"".join(credential)).hexdigest()[:32] if credential else None

    def verify(self, name: str, pin: str, count: bool = True) -> bool:
        """True for the right PIN. With ``count`` failures are counted and a locked name fails whatever
        the PIN; without, only the PIN is checked (a signed-in operator confirming a sign-off)."""
        if not count:
            credential = self._credential(name)
            return credential is not None and hmac.compare_digest(_hash(pin, credential[0]), credential[1])
        with self.store.transaction() as db:
            row = db.execute(
                "SELECT salt, hash, failures, locked_until FROM operator WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                _hash(pin, b"0" * 16)  # the same work for an unknown name: no timing tells which names exist
                return False
            salt, stored, failures, locked_until = row
            t = dt.datetime.now(dt.timezone.utc)
            if locked_until and dt.datetime.fromisoformat(locked_until) > t:
                return False
            if hmac.compare_digest(_hash(pin, salt), stored):
                db.execute("UPDATE operator SET failures = 0, locked_until = NULL WHERE name = ?", (name,))
                return True
            failures += 1
            lock = (t + dt.timedelta(minutes=LOCK_MINUTES)).isoformat() if failures >= MAX_FAILURES else None
            db.execute(
                "UPDATE operator SET failures = ?, locked_until = ? WHERE name = ?",
                (0 if lock else failures, lock, name),
            )
            if lock:
                log.warning("operator %s: %d wrong PINs, locked for %d minutes", name, MAX_FAILURES, LOCK_MINUTES)
            return False
