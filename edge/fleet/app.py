"""The fleet page's web app and server: one card per box, live from the lab broker.

- ``GET /``: the page; ``GET /login``: the display's own sign-in page (same operators' rules);
- ``GET /events``: Server-Sent Events, ``box`` (one box's card data: state, status, health, current
  slide, as the boxes published them) and ``link`` (the page's own link to the broker);
- ``GET /api/fleet``: the same as one JSON snapshot;
- ``POST /api/boxes/<device_id>/command/<verb>``: ``start_slide`` or ``stop_slide`` only, by a
  signed-in operator; answers with the box's own reply (200), a refusal (400/401/404), or none (504).

Served as the box's review page is: through the same guard (Host, login off loopback, CSRF, bounded
bodies), TLS required off loopback.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException
from fastapi.responses import Response, StreamingResponse

from edge.config import AppConfig, parse_mqtt_url
from edge.display.api_models import ErrorOut
from edge.display.app import install_errors
from edge.display.auth import LoginThrottle, Session, Sessions, auth_router, operator_session
from edge.display.feed import Change
from edge.display.guard import Guard, own_names
from edge.display.live import event_stream
from edge.display.server import DisplayServer, exposure
from edge.errors import ConfigError, PublishError
from edge.fleet.board import FleetBoard
from edge.mqtt.commands import MAX_PAYLOAD_BYTES
from edge.review.operators import Operators
from edge.review.store import SlideStore

log = logging.getLogger(__name__)

ASSETS = {  # name -> (package, media type): the sign-in page is the display's own
    "fleet.html": ("edge.fleet", "text/html; charset=utf-8"),
    "fleet.js": ("edge.fleet", "text/javascript; charset=utf-8"),
    "fleet.css": ("edge.fleet", "text/css; charset=utf-8"),
    "login.html": ("edge.display", "text/html; charset=utf-8"),
    "login.js": ("edge.display", "text/javascript; charset=utf-8"),
    "style.css": ("edge.display", "text/css; charset=utf-8"),
    "review.css": ("edge.display", "text/css; charset=utf-8"),
}
PAGES = {"/": "fleet.html", "/index.html": "fleet.html", "/login": "login.html"}
OPEN = frozenset(
    {"/login", "/static/login.js", "/static/style.css", "/static/review.css", "/api/login", "/api/session"}
)
MAX_STREAMS = 64


def _asset(name: str) -> Response:
    package, media = ASSETS[name]
    return Response(resources.files(package).joinpath("static", name).read_bytes(), media_type=media)


def fleet_router(board: FleetBoard, command_timeout_s: float, stopping: threading.Event) -> APIRouter:
    router = APIRouter(tags=["fleet"])
    streams = anyio.CapacityLimiter(MAX_STREAMS)  # page streams wait in threads of their own

    for path, name in PAGES.items():
        router.add_api_route(path, lambda name=name: _asset(name), methods=["GET"], include_in_schema=False)

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, f"no such page: /static/{name[:100]}")
        return _asset(name)

    @router.get("/api/fleet")
    def fleet() -> dict[str, Any]:
        """Every box's card data and the page's link to the broker."""
        return board.snapshot()

    @router.get("/events", response_class=StreamingResponse)
    async def events() -> StreamingResponse:
        return StreamingResponse(event_stream(_changes(board), stopping, streams), media_type="text/event-stream")

    @router.post(
        "/api/boxes/{device_id}/command/{verb}",
        responses={
            400: {"model": ErrorOut},
            401: {"model": ErrorOut},
            404: {"model": ErrorOut},
            504: {"model": ErrorOut},
        },
    )
    def command(
        device_id: str,
        verb: str,
        body: dict[str, Any] = Body(default_factory=dict),  # noqa: B008
        session: Session = Depends(operator_session),  # noqa: B008
    ) -> dict[str, Any]:
        """Send start_slide or stop_slide to one box; the answer is the box's own reply."""
        try:
            reply = board.command(device_id, verb, body, command_timeout_s)
        except KeyError:
            raise HTTPException(404, f"no box {device_id[:64]!r} on this broker") from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        except PublishError as exc:
            raise HTTPException(504, str(exc)) from None
        log.info(
            "fleet: %s sent %s to %s: %s", session.operator, verb, device_id, "ok" if reply.get("ok") else "refused"
        )
        return reply

    return router


def _changes(board: FleetBoard) -> Callable[[int, float], tuple[int, list[Change]]]:
    """The board's changed boxes as page events: ``box`` (a card's data) and ``link`` (the page's own link)."""

    def changes(since: int, timeout: float) -> tuple[int, list[Change]]:
        version, news = board.changes(since, timeout)
        return version, [
            Change("link", version, json.dumps(n["link"])) if "link" in n else Change("box", version, json.dumps(n))
            for n in news
        ]

    return changes


def create_fleet_app(
    board: FleetBoard,
    config: AppConfig,
    sessions: Sessions,
    operators: Operators | None,
    stopping: threading.Event,
    login_required: bool,
) -> FastAPI:
    where = config.fleet
    app = FastAPI(
        title="marrow-edge fleet",
        summary="Every box on the lab broker: online, counting, health, LIS backlog.",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(fleet_router(board, where.command_timeout_s, stopping))
    app.include_router(auth_router(sessions, operators, LoginThrottle()))
    install_errors(app)
    app.add_middleware(
        Guard,
        sessions=sessions,
        login_required=login_required,
        names=own_names([where.host, *where.allowed_hosts]),
        max_body_bytes=MAX_PAYLOAD_BYTES,
        read_timeout_s=where.read_timeout_s,
        pages=frozenset(PAGES),
        open_paths=OPEN,
    )
    return app


class Fleet:
    """``marrow-edge fleet``: the board on the lab broker and the page server together."""

    def __init__(self, config: AppConfig) -> None:
        where = config.fleet
        login_required, tls = exposure(where, "fleet")
        host, port = parse_mqtt_url(config.mqtt.url) if config.mqtt.url else ("127.0.0.1", 1883)
        review_url = where.review_url
        self.board = FleetBoard(
            host,
            port,
            config.mqtt,
            config.mqtt.topic_prefix,
            where.health_interval_s,
            where.offline_after,
            link_of=(lambda device_id: review_url.replace("{device_id}", quote(device_id, safe="")))
            if review_url
            else None,
        )
        if where.operators is not None and not where.operators.is_file():
            raise ConfigError(
                f"fleet.operators {where.operators} does not exist: add the first with "
                f"`marrow-edge review --store {where.operators} operator add NAME`"
            )
        self.store = SlideStore(where.operators) if where.operators is not None else None
        operators = Operators(self.store) if self.store is not None else None
        sessions = Sessions(
            where.session_hours, secure=tls is not None, stamp_of=operators.stamp if operators else None
        )
        stopping = threading.Event()
        app = create_fleet_app(self.board, config, sessions, operators, stopping, login_required)
        self.server = DisplayServer(
            app, where.host, where.port, tls, where.read_timeout_s, where.keep_alive_s, stopping
        )
        self._thread = threading.Thread(target=self.server.serve_forever, name="fleet-http", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Fleet:
        self.board.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.board.stop()
        if self.store is not None:
            self.store.close()
