"""What every request to the display passes before a route sees it (one ASGI middleware).

- **Host**: a loopback name, an IP literal, the box's own host name or a configured name; anything
  else is a page reached through another site's DNS name (DNS rebinding) and gets 400.
- **Login**: off loopback nothing but the login page is served without a session (pages get a
  303 to ``/login?next=<path>``, the API 401).
- **POST**: same-origin ``Origin`` when one is sent, the session's CSRF token when there is a
  session, ``application/json``, a declared and bounded body read within the read timeout.
- Every response: no-store caching unless the route says otherwise, the Content-Security-Policy
  (nothing from outside the box) and nosniff.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

import anyio
from starlette.datastructures import Headers

from edge.display.auth import Sessions
from edge.display.live import PAGES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Preview frames arrive as data: URLs; everything else from this server only.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# What a visitor without a session may fetch when the page needs a login.
OPEN = frozenset(
    {"/login", "/static/login.js", "/static/style.css", "/static/review.css", "/api/login", "/api/session"}
)


def host_name(header: str) -> str:
    """The name in a Host header, without its port (``[::1]:8080`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def own_names(configured: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """Names the box answers to: loopback, its own host name (also as .local), the configured ones."""
    names = {*LOOPBACK_NAMES, *(n.lower().rstrip(".") for n in configured)}
    hostname = socket.gethostname().lower()
    if hostname:
        names |= {hostname, f"{hostname}.local", hostname.split(".")[0]}
    return frozenset(names)


class Guard:
    def __init__(
        self,
        app: App,
        sessions: Sessions,
        login_required: bool,
        names: frozenset[str],
        max_body_bytes: int,
        read_timeout_s: float,
        command_body_bytes: int | None = None,
        pages: frozenset[str] | None = None,
        open_paths: frozenset[str] = OPEN,
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.login_required = login_required
        self.names = names
        self.max_body = max_body_bytes
        self.command_body = command_body_bytes or max_body_bytes  # a button's body goes to MQTT as it is
        self.read_timeout_s = read_timeout_s
        self.pages = frozenset(PAGES) if pages is None else pages  # sent to the login page, not answered 401
        self.open = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        send = _with_headers(send)
        name = host_name(headers.get("host", ""))
        if not (name in self.names or is_ip(name)):
            await _error(send, 400, "this page is served under the box's own name or address only")
            return
        path: str = scope["path"]
        session = self.sessions.get(headers.get("cookie"))
        scope.setdefault("state", {})["session"] = session  # the routes' dependencies read it (one lookup)
        if self.login_required and session is None and path not in self.open:
            if path in self.pages:
                await _respond(send, 303, b"", "text/plain", [(b"location", f"/login?next={quote(path)}".encode())])
            else:
                await _error(send, 401, "sign in first (name and PIN)")
            return
        if scope["method"] == "POST":
            limit = self.command_body if "/command/" in path else self.max_body
            refusal = self._refuse_post(headers, session, path, limit)
            if refusal is not None:
                await _error(send, *refusal)
                return
            body = await self._body(receive, send, limit)
            if body is None:
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _refuse_post(self, headers: Headers, session: Any, path: str, limit: int) -> tuple[int, str] | None:
        origin = headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1].lower() != headers.get("host", "").lower():
            return 403, "cross-site request refused"
        if session is not None and path != "/api/login" and not session.csrf_ok(headers.get("x-csrf-token")):
            return 403, "missing or wrong X-CSRF-Token: reload the page"
        # JSON only: a cross-site form post cannot send it without the browser asking first.
        if headers.get("content-type", "").split(";", 1)[0].strip().lower() != "application/json":
            return 415, "send the request as application/json"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return (413, f"over {limit} bytes") if length.isdigit() else (400, "bad Content-Length")
        return None

    async def _body(self, receive: Receive, send: Send, limit: int) -> bytes | None:
        """The whole body, or None after answering why not (too large, too slow, gone)."""
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.read_timeout_s) as timer:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await _error(send, 413, f"over {limit} bytes")
                    return None
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if timer.cancelled_caught:
            await _error(send, 408, f"the request body did not arrive within {self.read_timeout_s:g} s")
            return None
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            have = {k.lower() for k, _ in headers}
            if b"cache-control" not in have:
                headers.append((b"cache-control", b"no-store"))
            headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff")]
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _respond(send: Send, status: int, body: bytes, kind: str, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, message: str) -> None:
    await _respond(send, status, json.dumps({"error": message}).encode(), "application/json", [])
