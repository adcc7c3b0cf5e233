"""The display's web app: one factory given the running objects it serves, one router per area
(live view, auth, review and reports), every request through the guard (``edge.display.guard``).

Errors are one JSON shape, ``{"error": "..."}``, whatever raised them: a malformed body is a 400
that says what is wrong, an unknown slide a 404, a signed or stale slide a 409, a store that cannot
be read or written a 503.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge.config import AppConfig
from edge.display.adapt_api import adaptation_router
from edge.display.auth import LoginThrottle, Sessions, auth_router
from edge.display.feed import DisplayFeed
from edge.display.guard import Guard, own_names
from edge.display.live import live_router
from edge.display.review_api import review_router
from edge.errors import StorageError
from edge.mqtt.commands import MAX_PAYLOAD_BYTES
from edge.review.desk import PinError, ReviewDesk, SignedError, StaleError
from edge.review.records import ReviewError, UnknownSlideError

log = logging.getLogger(__name__)

OPENAPI_PATH = "/api/openapi.json"


@dataclass
class WebState:
    """What the routes may use: nothing else reaches them."""

    feed: DisplayFeed
    config: AppConfig = field(default_factory=AppConfig)
    desk: ReviewDesk | None = None  # None: no slide store, the live view only
    sessions: Sessions = field(default_factory=Sessions)
    login_required: bool = False
    stopping: threading.Event = field(default_factory=threading.Event)


def create_app(state: WebState) -> FastAPI:
    # No /docs: its pages load scripts from a CDN, which the box's Content-Security-Policy forbids.
    app = FastAPI(
        title="marrow-edge display",
        summary="The box's live view, review and sign-off, and its lab reports.",
        version="1",
        openapi_url=OPENAPI_PATH,
        docs_url=None,
        redoc_url=None,
    )
    where = state.config.display
    app.include_router(live_router(state.feed, where.command_timeout_s, state.stopping))
    operators = state.desk.operators if state.desk is not None else None
    app.include_router(auth_router(state.sessions, operators, LoginThrottle()))
    if state.desk is not None:
        app.include_router(review_router(state.desk, state.sessions, state.config))
        app.include_router(adaptation_router(state.desk, state.config))
    install_errors(app)
    app.add_middleware(
        Guard,
        sessions=state.sessions,
        login_required=state.login_required,
        names=own_names([where.host, *where.allowed_hosts]),
        max_body_bytes=256 * 1024,  # a reclassification of a few thousand cells
        read_timeout_s=where.read_timeout_s,
        command_body_bytes=MAX_PAYLOAD_BYTES,
    )
    return app


def install_errors(app: FastAPI) -> None:
    """One JSON error shape for every route of an app (the fleet page uses it too)."""

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else None
        return error(exc.status_code, detail or f"no such page: {request.url.path[:100]}", exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error(400, f"malformed JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "))
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("loc", ("",))[0] == "path":
            return error(404, f"no such page: {request.url.path[:100]}")
        return error(400, f"{where or 'request'}: {first.get('msg', 'not valid')}")

    @app.exception_handler(UnknownSlideError)
    async def unknown(request: Request, exc: UnknownSlideError) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(ReviewError)
    async def refused(request: Request, exc: ReviewError) -> JSONResponse:
        status = 409 if isinstance(exc, (SignedError, StaleError)) else 403 if isinstance(exc, PinError) else 400
        return error(status, str(exc))

    @app.exception_handler(StorageError)
    async def storage(request: Request, exc: StorageError) -> JSONResponse:
        log.error("display: slide store: %s", exc)
        return error(503, str(exc))
