"""``marrow-edge display``: the page at the microscope, served by the box itself.

Routes (standard library HTTP server; a handful of clients at most: the kiosk, a tablet):

- ``GET /``, ``GET /static/<file>``: the page; every asset is in this package, nothing is
  fetched from outside (the Content-Security-Policy forbids it too);
- ``GET /events``: Server-Sent Events, one per changed kind (status, health, gate, preview,
  field, tally, report, reply, link) carrying the box's own MQTT payload;
- ``GET /api/state``: the same, as one JSON snapshot;
- ``POST /api/command/<verb>``: JSON body -> ``cmd/<verb>`` on MQTT; answers with the box's
  reply (200), a refusal of the request itself (400/415/413), or no answer (504);
- ``GET /review``: the review page (``edge.display.review_api`` serves its ``/api/slides...``,
  ``/api/login``, ``/api/session`` routes from the slide store).

Served off loopback (a tablet on the bench) every page needs a login and TLS with the lab's
certificate; on loopback (the kiosk) the live view is open and only review changes need an
operator. Every POST needs JSON, a same-origin Origin header when one is sent, and, with a
session, the session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from edge.config import AppConfig
from edge.display.feed import DisplayFeed
from edge.display.review_api import ReviewRoutes, Sessions
from edge.errors import ConfigError, EdgeError, PublishError
from edge.mqtt.commands import MAX_PAYLOAD_BYTES, VERBS
from edge.mqtt.topics import Topics
from edge.reports.cli import lis_link
from edge.reports.lis import LisLink
from edge.review.desk import ReviewDesk
from edge.review.store import SlideStore

log = logging.getLogger(__name__)

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "review.html": "text/html; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "review.css": "text/css; charset=utf-8",
    "login.html": "text/html; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
}
PAGES = {"/": "index.html", "/index.html": "index.html", "/review": "review.html", "/login": "login.html"}
# What a visitor without a session may fetch when the page needs a login.
OPEN = {"/login", "/static/login.js", "/static/style.css", "/static/review.css", "/api/login", "/api/session"}
# Preview frames arrive as data: URLs; everything else from this server only.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"
HEARTBEAT_S = 10.0


def _asset(name: str) -> bytes:
    return resources.files("edge.display").joinpath("static", name).read_bytes()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class DisplayServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        feed: DisplayFeed,
        host: str,
        port: int,
        command_timeout_s: float = 5.0,
        review: ReviewRoutes | None = None,
        login_required: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.feed = feed
        self.command_timeout_s = command_timeout_s
        self.review = review
        self.sessions = review.sessions if review is not None else Sessions()
        self.login_required = login_required
        self.tls = tls
        self.stopping = threading.Event()
        super().__init__((host, port), _Handler)
        if tls is not None:
            # the handshake in the request thread, not in accept(): a slow client must not stall the others
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops the TLS handshake (an untrusted certificate) is its problem, not a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            log.info("display: connection from %s dropped: %s", client_address[0], exc)
        else:
            log.exception("display: request from %s failed", client_address[0])

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: DisplayServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("display http: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", extra)

    def _session(self) -> Any:
        return self.server.sessions.get(self.headers.get("Cookie"))

    def _allowed(self, path: str) -> bool:
        """Off loopback nothing but the login is served without a session."""
        if not self.server.login_required or path in OPEN or self._session() is not None:
            return True
        if path in PAGES:
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": f"/login?next={path}"})
        else:
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "sign in first (name and PIN)"})
        return False

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self._allowed(path):
            return
        if path in PAGES:
            self._send(HTTPStatus.OK, _asset(PAGES[path]), STATIC[PAGES[path]])
        elif self.server.review is not None and self.server.review.handles(path):
            self.server.review.get(self, path, self.path.partition("?")[2])
        elif path.startswith("/static/") and path[len("/static/") :] in STATIC:
            name = path[len("/static/") :]
            self._send(HTTPStatus.OK, _asset(name), STATIC[name])
        elif path == "/events":
            self._events()
        elif path == "/api/state":
            self._json(HTTPStatus.OK, self.server.feed.snapshot())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path[:100]}"})

    def _events(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        since = 0
        try:
            while not self.server.stopping.is_set():
                version, news = self.server.feed.changes(since, HEARTBEAT_S)
                # A keep-alive comment when nothing changed lets a dead client surface as a write error.
                chunk = "".join(f"event: {c.kind}\ndata: {c.payload}\n\n" for c in news) or ": keep-alive\n\n"
                self.wfile.write(chunk.encode())
                self.wfile.flush()
                since = version
        except (BrokenPipeError, ConnectionResetError):
            log.debug("display: a page went away")

    def body(self) -> dict[str, Any] | None:
        """The request's JSON object, or None after answering why not. Refused before it is read:
        another site's request (Origin), a missing CSRF token of the session, anything but JSON."""
        origin = self.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != self.headers.get("Host"):
            self._json(HTTPStatus.FORBIDDEN, {"error": "cross-site request refused"})
            return None
        session = self._session()
        if session is not None and not session.csrf_ok(self.headers.get("X-CSRF-Token")):
            self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong X-CSRF-Token: reload the page"})
            return None
        # JSON only: a cross-site form post cannot send it without the browser asking first.
        if self.headers.get_content_type() != "application/json":
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send the request as application/json"})
            return None
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_PAYLOAD_BYTES:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"over {MAX_PAYLOAD_BYTES} bytes"})
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"malformed JSON: {exc}"})
            return None
        if not isinstance(body, dict):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "expected a JSON object"})
            return None
        return body

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self._allowed(path):
            return
        if self.server.review is not None and self.server.review.handles(path):
            self.server.review.post(self, path)
            return
        prefix = "/api/command/"
        if not path.startswith(prefix):
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path[:100]}"})
            return
        verb = path[len(prefix) :]
        if verb not in VERBS:
            verbs = ", ".join(sorted(VERBS))
            self._json(HTTPStatus.NOT_FOUND, {"error": f"unknown verb {verb[:64]!r}; verbs: {verbs}"})
            return
        body = self.body()
        if body is None:
            return
        try:
            reply = self.server.feed.command(verb, body, self.server.command_timeout_s)
        except PublishError as exc:
            self._json(HTTPStatus.GATEWAY_TIMEOUT, {"error": str(exc)})
            return
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        self._json(HTTPStatus.OK, reply)


class Display:
    """The feed and the page server together: ``marrow-edge display``, or ``run --display``."""

    def __init__(self, config: AppConfig, broker_host: str, broker_port: int, store: SlideStore | None = None) -> None:
        self.lis: LisLink | None = None
        topics = Topics(config.mqtt.topic_prefix, config.device_id)
        self.feed = DisplayFeed(broker_host, broker_port, topics, config.mqtt)
        where = config.display
        login_required, tls = _exposure(config)
        self._own_store = store is None and config.review.store is not None
        if store is None and config.review.store is not None:
            store = SlideStore(config.review.store, config.review.keep_days)
        self.store = store
        review = None
        if store is not None:
            desk = ReviewDesk(store, topics, self.feed.publish)
            self.feed.on_connected.append(desk.resend)  # a signed report waiting for the broker goes out
            review = ReviewRoutes(desk, Sessions(where.session_hours, secure=tls is not None), config)
            self.lis = lis_link(store, config)  # signed reports to the lab's LIS (None: not configured)
            if self.lis is not None:
                desk.on_signed.append(self.lis.wake)
        try:
            self.server = DisplayServer(
                self.feed, where.host, where.port, where.command_timeout_s, review, login_required, tls
            )
        except OSError as exc:
            raise EdgeError(f"cannot serve the display on {where.host}:{where.port}: {exc.strerror}") from None
        self._thread = threading.Thread(target=self.server.serve_forever, name="display-http", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Display:
        if self.lis is not None:
            self.lis.start()
        self.feed.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.feed.stop()
        if self.lis is not None:
            self.lis.stop()
        if self._own_store and self.store is not None:
            self.store.close()


def _exposure(config: AppConfig) -> tuple[bool, ssl.SSLContext | None]:
    """(login required, TLS context) for where the page is served. Off loopback: both, or refuse."""
    where = config.display
    local = is_loopback(where.host)
    if not local and where.login == "never":
        raise ConfigError(
            f"display.host {where.host} is off loopback and display.login is never: the page would let anyone on "
            "the network change counts; serve on 127.0.0.1 or allow the login"
        )
    tls = None
    if where.tls_cert or where.tls_key:
        if not (where.tls_cert and where.tls_key):
            raise ConfigError("display.tls_cert and display.tls_key go together")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            tls.load_cert_chain(where.tls_cert, where.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"display TLS: cannot load {where.tls_cert} / {where.tls_key}: {exc}") from None
    elif not local:
        raise ConfigError(
            f"display.host {where.host} is off loopback: set display.tls_cert and display.tls_key (the lab's "
            "certificate) so names, PINs and results do not cross the network in clear text"
        )
    return (not local and where.login != "never") or where.login == "always", tls
