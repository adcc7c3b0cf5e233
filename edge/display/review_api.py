"""The review page's HTTP routes over the slide store, and the operators' sessions.

- ``POST /api/login`` {name, pin} -> a session cookie (HttpOnly, SameSite=Strict; Secure with TLS)
  and the session's CSRF token; ``POST /api/logout``; ``GET /api/session``.
- ``GET /api/slides``: slide history; ``GET /api/slides/<id>``: one slide's cells, machine and
  reviewed counts, audit and sign-offs; ``GET /api/slides/<id>/cells/<n>/crop.jpg|context.jpg``,
  ``GET /api/slides/<id>/fields/<n>.jpg``: the stored images.
- ``GET /api/slides/<id>/report.pdf|report.fhir.json|report.hl7|report.csv|cells.csv`` (``?paper=letter``,
  ``?inline=1`` to open the PDF for printing): the lab report, signed or preliminary (``edge.reports``).
- ``POST /api/slides/<id>/reclassify`` {cells, to, amend_reason?}; ``POST /api/slides/<id>/sign`` {pin}:
  with a session only (the audit names who).
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol
from urllib.parse import parse_qs

from edge.config import AppConfig
from edge.errors import StorageError
from edge.reports.cli import render
from edge.reports.content import load_report
from edge.review.desk import ReviewDesk, SignedError
from edge.review.store import ReviewError

log = logging.getLogger(__name__)

COOKIE = "marrow_session"
SLIDE = re.compile(r"^/api/slides/([A-Za-z0-9_.:-]{1,80})(/.*)?$")
CELL_IMAGE = re.compile(r"^/cells/(\d{1,7})/(crop|context)\.jpg$")
FIELD_IMAGE = re.compile(r"^/fields/(\d{1,7})\.jpg$")
REPORT = re.compile(r"^/(report\.pdf|report\.fhir\.json|report\.hl7|report\.csv|cells\.csv)$")
REPORT_FORMAT = {
    "report.pdf": "pdf",
    "report.fhir.json": "fhir",
    "report.hl7": "hl7",
    "report.csv": "csv",
    "cells.csv": "cells-csv",
}
MEDIA = {
    "pdf": "application/pdf",
    "fhir": "application/fhir+json",
    "hl7": "text/plain; charset=utf-8",
    "csv": "text/csv",
    "cells-csv": "text/csv",
}


class Handler(Protocol):
    """The slice of the display's request handler the routes use."""

    headers: Any

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None: ...
    def _json(self, status: int, data: dict[str, Any], extra: dict[str, str] | None = None) -> None: ...
    def _session(self) -> Session | None: ...
    def body(self) -> dict[str, Any] | None: ...


@dataclass
class Session:
    operator: str
    expires: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and secrets.compare_digest(token, self.csrf)


class Sessions:
    """Logged-in operators by cookie token, in memory: a restart of the display signs everyone out."""

    def __init__(self, hours: float = 8.0, secure: bool = False) -> None:
        self.lifetime_s = hours * 3600.0
        self.secure = secure
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, operator: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(operator, time.time() + self.lifetime_s)
        with self._lock:
            self._by_token = {t: s for t, s in self._by_token.items() if s.expires > time.time()}
            self._by_token[token] = session
        return token, session

    def get(self, cookie_header: str | None) -> Session | None:
        token = _token(cookie_header)
        with self._lock:
            session = self._by_token.get(token or "")
        return session if session is not None and session.expires > time.time() else None

    def close(self, cookie_header: str | None) -> None:
        with self._lock:
            self._by_token.pop(_token(cookie_header) or "", None)

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


class ReviewRoutes:
    def __init__(self, desk: ReviewDesk, sessions: Sessions, config: AppConfig | None = None) -> None:
        self.desk = desk
        self.sessions = sessions
        self.config = config or AppConfig()

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith("/api/slides") or path in ("/api/login", "/api/logout", "/api/session")

    def get(self, h: Handler, path: str, query: str = "") -> None:
        try:
            self._get(h, path, parse_qs(query))
        except ReviewError as exc:
            h._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
        except StorageError as exc:
            h._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})

    def _get(self, h: Handler, path: str, query: dict[str, list[str]]) -> None:
        if path == "/api/session":
            session = h._session()
            h._json(
                HTTPStatus.OK,
                {"operator": session.operator if session else None, "csrf": session.csrf if session else None},
            )
            return
        if path == "/api/slides":
            h._json(HTTPStatus.OK, {"slides": self.desk.history()})
            return
        match = SLIDE.match(path)
        if match is None:
            h._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path[:100]}"})
            return
        slide_id, rest = match.group(1), match.group(2) or ""
        if not rest:
            h._json(HTTPStatus.OK, self.desk.view(slide_id))
            return
        if m := REPORT.match(rest):
            self._report(h, slide_id, m.group(1), query)
            return
        image: bytes | None = None
        if m := CELL_IMAGE.match(rest):
            image = self.desk.store.image(slide_id, int(m.group(1)), m.group(2))
        elif m := FIELD_IMAGE.match(rest):
            stored = self.desk.store.field_image(slide_id, int(m.group(1)))
            image = stored[0] if stored else None
        if image is None:
            h._json(HTTPStatus.NOT_FOUND, {"error": f"no image at {path[:100]}"})
            return
        # Stored images never change: let the browser keep them.
        h._send(HTTPStatus.OK, image, "image/jpeg", {"Cache-Control": "private, max-age=86400"})

    def _report(self, h: Handler, slide_id: str, name: str, query: dict[str, list[str]]) -> None:
        fmt = REPORT_FORMAT[name]
        paper = query.get("paper", ["a4"])[0]
        report = load_report(self.desk.store, slide_id)
        data = render(report, self.desk.store, self.config, fmt, paper if paper in ("a4", "letter") else None)
        # the specimen id is typed by a person: only safe characters reach the header and the file name
        stem = re.sub(
            r"[^A-Za-z0-9._-]", "_", f"{report.specimen_id or slide_id}-{report.status}{report.version or ''}"
        )
        inline = fmt == "pdf" and query.get("inline") == ["1"]
        disposition = f'{"inline" if inline else "attachment"}; filename="{stem}-{name}"'
        h._send(HTTPStatus.OK, data, MEDIA[fmt], {"Content-Disposition": disposition, "Cache-Control": "no-store"})

    def post(self, h: Handler, path: str) -> None:
        body = h.body()
        if body is None:
            return
        if path == "/api/login":
            self._login(h, body)
            return
        if path == "/api/logout":
            self.sessions.close(h.headers.get("Cookie"))
            h._json(HTTPStatus.OK, {"operator": None})
            return
        session = h._session()
        if session is None:
            h._json(HTTPStatus.UNAUTHORIZED, {"error": "sign in with your name and PIN to review"})
            return
        match = SLIDE.match(path)
        action = match.group(2) if match else None
        try:
            if match and action == "/reclassify":
                cells, to = body.get("cells"), body.get("to")
                if not isinstance(cells, list) or not all(isinstance(c, int) for c in cells) or not isinstance(to, str):
                    h._json(HTTPStatus.BAD_REQUEST, {"error": "expected {cells: [ids], to: class}"})
                    return
                reason = body.get("amend_reason")
                changes = self.desk.reclassify(
                    match.group(1), cells, to, session.operator, reason if isinstance(reason, str) else None
                )
                h._json(HTTPStatus.OK, {"changed": [c.model_dump() for c in changes]})
            elif match and action == "/sign":
                pin = body.get("pin")
                if not isinstance(pin, str):
                    h._json(HTTPStatus.BAD_REQUEST, {"error": "expected {pin}"})
                    return
                message = self.desk.sign(match.group(1), session.operator, pin)
                h._json(HTTPStatus.OK, {"version": message.version, "status": message.status})
            else:
                h._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path[:100]}"})
        except SignedError as exc:
            h._json(HTTPStatus.CONFLICT, {"error": str(exc)})
        except ReviewError as exc:
            h._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except StorageError as exc:
            h._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})

    def _login(self, h: Handler, body: dict[str, Any]) -> None:
        name, pin = body.get("name"), body.get("pin")
        if not isinstance(name, str) or not isinstance(pin, str) or not self.desk.operators.verify(name, pin):
            log.warning("display: a login as %r was refused", str(name)[:64])
            h._json(HTTPStatus.UNAUTHORIZED, {"error": "name or PIN not accepted"})
            return
        token, session = self.sessions.open(name)
        log.info("display: %s signed in", name)
        h._json(HTTPStatus.OK, {"operator": name, "csrf": session.csrf}, {"Set-Cookie": self.sessions.cookie(token)})
