"""``marrow-edge display``: the page at the microscope, served by the box itself.

Routes (standard library HTTP server; a handful of clients at most: the kiosk, a tablet):

- ``GET /``, ``GET /static/<file>``: the page; every asset is in this package, nothing is
  fetched from outside (the Content-Security-Policy forbids it too);
- ``GET /events``: Server-Sent Events, one per changed kind (status, health, gate, preview,
  field, tally, report, reply, link) carrying the box's own MQTT payload;
- ``GET /api/state``: the same, as one JSON snapshot;
- ``POST /api/command/<verb>``: JSON body -> ``cmd/<verb>`` on MQTT; answers with the box's
  reply (200), a refusal of the request itself (400/415/413), or no answer (504).
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from edge.config import AppConfig
from edge.display.feed import DisplayFeed
from edge.errors import EdgeError, PublishError
from edge.mqtt.commands import MAX_PAYLOAD_BYTES, VERBS
from edge.mqtt.topics import Topics

log = logging.getLogger(__name__)

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Preview frames arrive as data: URLs; everything else from this server only.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"
HEARTBEAT_S = 10.0


def _asset(name: str) -> bytes:
    return resources.files("edge.display").joinpath("static", name).read_bytes()


class DisplayServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, feed: DisplayFeed, host: str, port: int, command_timeout_s: float = 5.0) -> None:
        self.feed = feed
        self.command_timeout_s = command_timeout_s
        self.stopping = threading.Event()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

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

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, _asset("index.html"), STATIC["index.html"])
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

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        prefix = "/api/command/"
        if not path.startswith(prefix):
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path[:100]}"})
            return
        verb = path[len(prefix) :]
        if verb not in VERBS:
            verbs = ", ".join(sorted(VERBS))
            self._json(HTTPStatus.NOT_FOUND, {"error": f"unknown verb {verb[:64]!r}; verbs: {verbs}"})
            return
        # JSON only: a cross-site form post cannot send it without the browser asking first.
        if self.headers.get_content_type() != "application/json":
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send the command as application/json"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_PAYLOAD_BYTES:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"over {MAX_PAYLOAD_BYTES} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"malformed JSON: {exc}"})
            return
        if not isinstance(body, dict):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "expected a JSON object"})
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

    def __init__(self, config: AppConfig, broker_host: str, broker_port: int) -> None:
        self.feed = DisplayFeed(
            broker_host, broker_port, Topics(config.mqtt.topic_prefix, config.device_id), config.mqtt
        )
        where = config.display
        try:
            self.server = DisplayServer(self.feed, where.host, where.port, where.command_timeout_s)
        except OSError as exc:
            raise EdgeError(f"cannot serve the display on {where.host}:{where.port}: {exc.strerror}") from None
        self._thread = threading.Thread(target=self.server.serve_forever, name="display-http", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Display:
        self.feed.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.feed.stop()
