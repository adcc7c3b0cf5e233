"""The web pages' sections: the display at the microscope and the lab's fleet page. Both are served
the same way (loopback by default; off loopback only with TLS and a login)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edge.config.base import Strict


class DisplayConfig(Strict):
    """``marrow-edge display``: the page at the microscope."""

    host: str = Field(
        "127.0.0.1", description="Address the page is served on; 0.0.0.0 lets a tablet on the bench reach it."
    )
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port (tests).")
    command_timeout_s: float = Field(5.0, gt=0, description="Longest wait for the box's reply to a button.")
    login: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Page login: auto asks for one when the display is served off loopback; never refuses to "
        "serve off loopback.",
    )
    tls_cert: Path | None = Field(None, description="The lab's certificate (PEM) for the display off loopback.")
    tls_key: Path | None = Field(None, description="Its private key (PEM).")
    session_hours: float = Field(8.0, gt=0, description="A login lasts this long (one shift).")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Names the page is reached under besides loopback, IP addresses and the box's own host name "
        "(a request for any other Host is refused: DNS rebinding).",
    )
    read_timeout_s: float = Field(
        10.0, gt=0, le=300, description="A client must send its request (headers and body) within this; else closed."
    )
    keep_alive_s: float = Field(5.0, gt=0, le=300, description="An idle kept-alive connection is closed after this.")


class FleetConfig(DisplayConfig):
    """``marrow-edge fleet``: one page over every box on the lab broker, served by a lab machine."""

    port: int = Field(8090, ge=0, le=65535, description="0 picks a free port (tests).")
    operators: Path | None = Field(
        None,
        description="A slide store whose operators may sign in to send start/stop (`marrow-edge review operator "
        "add --store FILE`); unset: the page is read-only for everyone.",
    )
    review_url: str | None = Field(
        None,
        description="Each box's review page, {device_id} replaced (e.g. https://{device_id}.lab:8080/review): a "
        "card links to it. Unset: no link.",
    )
    health_interval_s: float = Field(
        10.0, gt=0, description="A box's health period when its health message does not say (older boxes)."
    )
    offline_after: float = Field(
        1.25, ge=1.0, le=5.0, description="A box heard from in no message for this many health periods is offline."
    )
