"""The live view's routes: the pages and their assets, the box's state as SSE and JSON, its buttons.

- ``GET /``, ``/review``, ``/login``, ``GET /static/<file>``: every asset is in this package, nothing
  is fetched from outside (the Content-Security-Policy forbids it too);
- ``GET /events``: Server-Sent Events, one per changed kind (status, health, gate, preview, field,
  tally, report, reply, link) carrying the box's own MQTT payload;
- ``GET /api/state``: the same, as one JSON snapshot;
- ``POST /api/command/<verb>``: JSON body -> ``cmd/<verb>`` on MQTT; answers with the box's reply
  (200), a refusal of the request itself (400/404), or no answer (504).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import anyio
from anyio.to_thread import run_sync
from fastapi import APIRouter, Body, HTTPException
from fastapi.responses import Response, StreamingResponse

from edge.display.api_models import ErrorOut
from edge.display.feed import Change, DisplayFeed
from edge.errors import PublishError
from edge.mqtt.commands import VERBS

log = logging.getLogger(__name__)

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "review.html": "text/html; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "review.css": "text/css; charset=utf-8",
    "adapt.js": "text/javascript; charset=utf-8",
    "login.html": "text/html; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
}
PAGES = {"/": "index.html", "/index.html": "index.html", "/review": "review.html", "/login": "login.html"}
HEARTBEAT_S = 10.0
WAIT_S = 0.5
MAX_STREAMS = 32


def _asset(name: str) -> Response:
    body = resources.files("edge.display").joinpath("static", name).read_bytes()
    return Response(body, media_type=STATIC[name])


def live_router(feed: DisplayFeed, command_timeout_s: float, stopping: threading.Event) -> APIRouter:
    router = APIRouter(tags=["live"])
    # Page streams wait in threads of their own: they never take the threads the other routes run on.
    streams = anyio.CapacityLimiter(MAX_STREAMS)

    for path, name in PAGES.items():
        router.add_api_route(path, lambda name=name: _asset(name), methods=["GET"], include_in_schema=False)

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no such page: /static/{name[:100]}")
        return _asset(name)

    @router.get("/api/state")
    def state() -> dict[str, Any]:
        """The newest valid message of each kind, as the box published it."""
        return feed.snapshot()

    @router.get("/events", response_class=StreamingResponse)
    async def events() -> StreamingResponse:
        return StreamingResponse(event_stream(feed.changes, stopping, streams), media_type="text/event-stream")

    @router.post(
        "/api/command/{verb}",
        responses={400: {"model": ErrorOut}, 404: {"model": ErrorOut}, 504: {"model": ErrorOut}},
    )
    def command(verb: str, body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:  # noqa: B008
        """Publish ``cmd/<verb>`` and answer with the box's own reply."""
        if verb not in VERBS:
            raise HTTPException(404, f"unknown verb {verb[:64]!r}; verbs: {', '.join(sorted(VERBS))}")
        try:
            return feed.command(verb, body, command_timeout_s)
        except PublishError as exc:
            raise HTTPException(504, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    return router


async def event_stream(
    changes: Callable[[int, float], tuple[int, list[Change]]],
    stopping: threading.Event,
    streams: anyio.CapacityLimiter,
) -> AsyncIterator[str]:
    """Server-Sent Events from a ``changes(since, timeout)`` source (the display's feed, the fleet's board):
    one event per changed kind, newest only, and a keep-alive comment when nothing changes."""
    since, quiet_s = 0, 0.0
    while not stopping.is_set():  # waits in short slices: a stopping server ends every stream within one
        version, news = await run_sync(changes, since, WAIT_S, abandon_on_cancel=True, limiter=streams)
        if news:
            yield "".join(f"event: {c.kind}\ndata: {c.payload}\n\n" for c in news)
            since, quiet_s = version, 0.0
        else:
            quiet_s += WAIT_S
            if quiet_s >= HEARTBEAT_S:  # a keep-alive comment lets a dead client surface as a write error
                yield ": keep-alive\n\n"
                quiet_s = 0.0
