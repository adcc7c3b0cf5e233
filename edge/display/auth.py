"""Operators' sessions on the display: login, logout, who is signed in, and the dependencies routes use.

- ``POST /api/login`` {name, pin} -> a session cookie (HttpOnly, SameSite=Strict; Secure with TLS) and
  the session's CSRF token; ``POST /api/logout``; ``GET /api/session``.

A session is bound to the operator's credential as it was at login: removing the operator or setting
a new PIN ends every session of theirs at the next request (the CLI may do it from another process:
the stamp is read from the store). Wrong PINs are throttled per client address and name, so a
stranger's guesses lock out the stranger, not the technician who is signing.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from edge.display.api_models import LoginIn, SessionOut
from edge.review.operators import Operators

log = logging.getLogger(__name__)

COOKIE = "marrow_session"
# Wrong PINs per (client address, name) before that pair waits; the store's own lock is the network-wide cap.
THROTTLE_FAILURES = 5
THROTTLE_S = 300.0


@dataclass
class Session:
    operator: str
    expires: float
    stamp: str | None = None  # the operator's credential at login (Operators.stamp)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    pin_failures: int = 0  # wrong PINs at sign-off in this session

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and secrets.compare_digest(token, self.csrf)


class Sessions:
    """Logged-in operators by cookie token, in memory: a restart of the display signs everyone out.

    ``stamp_of(name)``: the operator's current credential stamp (None: no such operator); a session
    whose stamp differs is over."""

    def __init__(
        self, hours: float = 8.0, secure: bool = False, stamp_of: Callable[[str], str | None] | None = None
    ) -> None:
        self.lifetime_s = hours * 3600.0
        self.secure = secure
        self.stamp_of = stamp_of
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, operator: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        stamp = self.stamp_of(operator) if self.stamp_of else None
        session = Session(operator, time.time() + self.lifetime_s, stamp)
        with self._lock:
            self._by_token = {t: s for t, s in self._by_token.items() if s.expires > time.time()}
            self._by_token[token] = session
        return token, session

    def get(self, cookie_header: str | None) -> Session | None:
        token = _token(cookie_header) or ""
        with self._lock:
            session = self._by_token.get(token)
        if session is None or session.expires <= time.time():
            return None
        if self.stamp_of is not None and self.stamp_of(session.operator) != session.stamp:
            with self._lock:
                self._by_token.pop(token, None)
            log.warning("display: session of %s ended: the operator was removed or their PIN changed", session.operator)
            return None
        return session

    def close(self, cookie_header: str | None) -> None:
        with self._lock:
            self._by_token.pop(_token(cookie_header) or "", None)

    def end(self, session: Session) -> None:
        with self._lock:
            self._by_token = {t: s for t, s in self._by_token.items() if s is not session}

    def cookie(self, token: str) -> str:
        secure = "; Secure" if self.secure else ""
        return f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(self.lifetime_s)}{secure}"


def _token(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    try:
        morsel = SimpleCookie(cookie_header).get(COOKIE)
    except CookieError:
        return None
    return morsel.value if morsel is not None else None


class LoginThrottle:
    """Wrong PINs per (client address, name): after THROTTLE_FAILURES that pair waits THROTTLE_S."""

    def __init__(self, failures: int = THROTTLE_FAILURES, wait_s: float = THROTTLE_S) -> None:
        self.failures, self.wait_s = failures, wait_s
        self._seen: dict[tuple[str, str], tuple[int, float]] = {}  # -> (failures, time of the last)
        self._lock = threading.Lock()

    def wait(self, client: str, name: str) -> float:
        """Seconds this pair must still wait (0: it may try)."""
        with self._lock:
            count, last = self._seen.get((client, name), (0, 0.0))
        left = last + self.wait_s - time.monotonic()
        return left if count >= self.failures and left > 0 else 0.0

    def failed(self, client: str, name: str) -> None:
        with self._lock:
            if len(self._seen) > 10_000:  # bounded: forget the oldest half
                for key in sorted(self._seen, key=lambda k: self._seen[k][1])[:5_000]:
                    del self._seen[key]
            count, last = self._seen.get((client, name), (0, 0.0))
            if time.monotonic() - last > self.wait_s:
                count = 0
            self._seen[(client, name)] = (count + 1, time.monotonic())

    def passed(self, client: str, name: str) -> None:
        with self._lock:
            self._seen.pop((client, name), None)


def client_of(request: Request) -> str:
    return request.client.host if request.client else "?"


def auth_router(sessions: Sessions, operators: Operators | None, throttle: LoginThrottle) -> APIRouter:
    router = APIRouter(tags=["auth"])

    @router.get("/api/session", response_model=SessionOut)
    def who(session: Session | None = Depends(current_session)) -> SessionOut:  # noqa: B008
        return SessionOut(operator=session.operator if session else None, csrf=session.csrf if session else None)

    @router.post("/api/login", response_model=SessionOut, responses={401: {}, 429: {}})
    def login(body: LoginIn, request: Request, response: Response) -> SessionOut:
        client = client_of(request)
        wait = throttle.wait(client, body.name)
        if wait:
            raise HTTPException(
                429, f"too many wrong PINs from here: try again in {wait / 60:.0f} min", {"Retry-After": f"{wait:.0f}"}
            )
        if operators is None or not operators.verify(body.name, body.pin):
            throttle.failed(client, body.name)
            log.warning("display: a login as %r from %s was refused", body.name[:64], client)
            raise HTTPException(401, "name or PIN not accepted")
        throttle.passed(client, body.name)
        token, session = sessions.open(body.name)
        log.info("display: %s signed in from %s", body.name, client)
        response.headers["Set-Cookie"] = sessions.cookie(token)
        return SessionOut(operator=body.name, csrf=session.csrf)

    @router.post("/api/logout", response_model=SessionOut)
    def logout(request: Request) -> SessionOut:
        sessions.close(request.headers.get("Cookie"))
        return SessionOut(operator=None, csrf=None)

    return router


def current_session(request: Request) -> Session | None:
    """Who sent the request, as the guard looked it up (the session and the operator's stamp are read once)."""
    return request.state.session


def operator_session(request: Request) -> Session:
    """A route that changes a slide: a signed-in operator (the guard has checked the CSRF token)."""
    session = current_session(request)
    if session is None:
        raise HTTPException(401, "sign in with your name and PIN to review")
    return session
