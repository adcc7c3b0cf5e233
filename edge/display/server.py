"""``marrow-edge display``: the page at the microscope, served by the box itself.

The app (``edge.display.app``) runs under uvicorn in a thread of the process that owns the feed and
the slide store (``marrow-edge display`` or ``run --display``). The socket is bound before the
server starts, so a port in use is a clear error at once and port 0 (tests) is known at once.
Connections that send nothing, or half a request, are closed after ``display.read_timeout_s``
(uvicorn closes idle kept-alive ones itself, but not fresh ones).

Served off loopback (a tablet on the bench) every page needs a login and TLS with the lab's
certificate; on loopback (the kiosk) the live view is open and only review changes need an operator.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import threading
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge.config import AppConfig, DisplayConfig
from edge.display.app import WebState, create_app
from edge.display.auth import Sessions
from edge.display.feed import DisplayFeed
from edge.errors import ConfigError, EdgeError
from edge.mqtt.topics import Topics
from edge.reports.cli import lis_link
from edge.reports.lis import LisLink
from edge.review.desk import ReviewDesk
from edge.review.operators import Operators
from edge.review.store import SlideStore

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _timed_protocol(read_timeout_s: float) -> type[H11Protocol]:
    class TimedH11Protocol(H11Protocol):
        """uvicorn's HTTP/1.1 protocol that also closes a connection whose request does not arrive in time."""

        _read_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
            self._read_timer = self.loop.call_later(read_timeout_s, self._timed_out)

        def _timed_out(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete  # no request being answered
            if waiting and not self.transport.is_closing():
                log.debug("display: closed a connection from %s that sent no request in time", self.client)
                self.transport.close()

    return TimedH11Protocol


class DisplayServer:
    """uvicorn serving ``app`` on ``host:port``; ``serve_forever`` blocks (run it in a thread), ``stop`` ends it."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        tls: tuple[str, str] | None = None,
        read_timeout_s: float = 10.0,
        keep_alive_s: float = 5.0,
        stopping: threading.Event | None = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.socket = socket.create_server((host, port), family=family, backlog=128)
        except OSError as exc:
            raise EdgeError(f"cannot serve the display on {host}:{port}: {exc.strerror}") from None
        self.tls = tls is not None
        self.stopping = stopping or threading.Event()
        config = uvicorn.Config(
            app,
            http=_timed_protocol(read_timeout_s),  # type: ignore[arg-type]
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_keep_alive=max(1, round(keep_alive_s)),
            timeout_graceful_shutdown=2,  # page streams are cut after this at stop
            limit_concurrency=200,
            h11_max_incomplete_event_size=32 * 1024,  # request line and headers
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
        )
        config.load()
        if config.ssl is not None:
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server = uvicorn.Server(config)
        self._done = threading.Event()
        self._started = False

    @property
    def server_address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"{'https' if self.tls else 'http'}://{host}:{port}/"

    def serve_forever(self) -> None:
        self._started = True
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._done.set()

    def stop(self) -> None:
        self.stopping.set()
        self._server.should_exit = True
        if self._started and not self._done.wait(10.0):
            log.warning("display: the web server did not stop within 10 s")
        self.socket.close()


class Display:
    """The feed and the page server together: ``marrow-edge display``, or ``run --display``."""

    def __init__(self, config: AppConfig, broker_host: str, broker_port: int, store: SlideStore | None = None) -> None:
        self.lis: LisLink | None = None
        topics = Topics(config.mqtt.topic_prefix, config.device_id)
        self.feed = DisplayFeed(broker_host, broker_port, topics, config.mqtt)
        where = config.display
        login_required, tls = exposure(config.display)
        self._own_store = store is None and config.review.store is not None
        if store is None and config.review.store is not None:
            store = SlideStore(config.review.store, config.review.keep_days)
        self.store = store
        state = WebState(self.feed, config, login_required=login_required)
        if store is not None:
            desk = ReviewDesk(store, topics, self.feed.publish)
            self.feed.on_connected.append(desk.resend)  # a signed report waiting for the broker goes out
            state.desk = desk
            state.sessions = Sessions(where.session_hours, secure=tls is not None, stamp_of=Operators(store).stamp)
            self.lis = lis_link(store, config)  # signed reports to the lab's LIS (None: not configured)
            if self.lis is not None:
                desk.on_signed.append(self.lis.wake)
        self.server = DisplayServer(
            create_app(state), where.host, where.port, tls, where.read_timeout_s, where.keep_alive_s, state.stopping
        )
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


def exposure(where: DisplayConfig, section: str = "display") -> tuple[bool, tuple[str, str] | None]:
    """(login required, TLS certificate and key) for where a page is served. Off loopback: both, or refuse."""
    local = is_loopback(where.host)
    if not local and where.login == "never":
        raise ConfigError(
            f"{section}.host {where.host} is off loopback and {section}.login is never: the page would let anyone on "
            "the network act on the box; serve on 127.0.0.1 or allow the login"
        )
    tls = None
    if where.tls_cert or where.tls_key:
        if not (where.tls_cert and where.tls_key):
            raise ConfigError(f"{section}.tls_cert and {section}.tls_key go together")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(where.tls_cert, where.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{section} TLS: cannot load {where.tls_cert} / {where.tls_key}: {exc}") from None
        tls = (str(where.tls_cert), str(where.tls_key))
    elif not local:
        raise ConfigError(
            f"{section}.host {where.host} is off loopback: set {section}.tls_cert and {section}.tls_key (the lab's "
            "certificate) so names, PINs and results do not cross the network in clear text"
        )
    return (not local and where.login != "never") or where.login == "always", tls
