"""Request and response bodies of the display's HTTP API: the handlers use them and the OpenAPI
document (``/api/openapi.json``, a copy in ``schemas/display-openapi.json``) is made from them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edge.mqtt.messages import ChangeOut


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    error: str = Field(description="What went wrong, for a person to read.")


class LoginIn(_In):
    name: str = Field(max_length=64)
    pin: str = Field(max_length=256)


class SessionOut(BaseModel):
    operator: str | None = Field(description="Who is signed in (None: nobody).")
    csrf: str | None = Field(description="Send it back as X-CSRF-Token with every POST of this session.")


class ReclassifyIn(_In):
    cells: list[int] = Field(min_length=1, max_length=5000, description="Cell ids of the slide.")
    to: str = Field(max_length=64, description="A class of the slide's bundle, or not_countable.")
    amend_reason: str | None = Field(None, max_length=500, description="Required when the slide is signed.")


class ReclassifyOut(BaseModel):
    changed: list[ChangeOut]
    revision: int = Field(description="The slide's revision after the change.")


class SignIn(_In):
    pin: str = Field(max_length=256)
    revision: int | None = Field(
        None, description="The revision the operator reviewed (GET /api/slides/{id}); a newer one is refused (409)."
    )


class SignOut(BaseModel):
    version: int
    status: str = Field(description="final (the first sign-off) or amended.")


class SlideSummary(BaseModel):
    slide_id: str
    specimen_id: str | None
    started: str
    ended: str | None
    state: str
    signed_version: int
    countable: int | None
    domain: str | None
    lis: str | None = Field(
        None, description="LIS delivery of the newest signed version: pending, delivered, rejected or failed."
    )


class SlideList(BaseModel):
    slides: list[SlideSummary]


class SlideView(BaseModel):
    """Everything the review page shows of one slide (the shapes of its parts are the page's own)."""

    model_config = ConfigDict(extra="allow")
    slide: dict[str, Any]
    revision: int
    trays: list[str]
    fields: dict[int, dict[str, Any]]
    cells: list[dict[str, Any]]
    machine: dict[str, Any]
    reviewed: dict[str, Any]
    audit: list[dict[str, Any]]
    signoffs: list[dict[str, Any]]
