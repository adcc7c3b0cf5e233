"""The review page's HTTP routes over the slide store.

- ``GET /api/slides``: slide history; ``GET /api/slides/<id>``: one slide's cells, machine and
  reviewed counts, audit, sign-offs and revision; ``GET /api/slides/<id>/cells/<n>/crop.jpg|context.jpg``,
  ``GET /api/slides/<id>/fields/<n>.jpg``: the stored images.
- ``GET /api/slides/<id>/report.pdf|report.fhir.json|report.hl7|report.csv|cells.csv`` (``?paper=letter``,
  ``?inline=1`` to open the PDF for printing): the lab report, signed or preliminary (``edge.reports``).
- ``POST /api/slides/<id>/reclassify`` {cells, to, amend_reason?}; ``POST /api/slides/<id>/sign``
  {pin, revision?}: with a session only (the audit names who).
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import Response

from edge.config import AppConfig
from edge.display.api_models import (
    ErrorOut,
    ReclassifyIn,
    ReclassifyOut,
    SignIn,
    SignOut,
    SlideList,
    SlideSummary,
    SlideView,
)
from edge.display.auth import THROTTLE_FAILURES, Session, Sessions, operator_session
from edge.reports.cli import render
from edge.reports.content import load_report
from edge.review.desk import PinError, ReviewDesk

log = logging.getLogger(__name__)

SlideId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]
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
ERRORS = {400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}}
# Stored images never change: let the browser keep them.
IMAGE_CACHE = {"Cache-Control": "private, max-age=86400"}


def review_router(desk: ReviewDesk, sessions: Sessions, config: AppConfig) -> APIRouter:
    router = APIRouter(tags=["review"], responses=ERRORS)
    # a default, not an Annotated alias: FastAPI reads string annotations in the module's globals
    signed_in = Depends(operator_session)

    @router.get("/api/slides", response_model=SlideList)
    def slides() -> SlideList:
        return SlideList(slides=[SlideSummary.model_validate(s) for s in desk.history()])

    @router.get("/api/slides/{slide_id}", response_model=SlideView)
    def slide(slide_id: SlideId) -> SlideView:
        return SlideView.model_validate(desk.view(slide_id))

    @router.get("/api/slides/{slide_id}/cells/{cell_id}/{kind}.jpg", response_class=Response)
    def cell_image(slide_id: SlideId, cell_id: int, kind: Literal["crop", "context"]) -> Response:
        image = desk.store.image(slide_id, cell_id, kind)
        if image is None:
            raise HTTPException(404, f"no image of cell {cell_id} of slide {slide_id}")
        return Response(image, media_type="image/jpeg", headers=IMAGE_CACHE)

    @router.get("/api/slides/{slide_id}/fields/{field_index}.jpg", response_class=Response)
    def field_image(slide_id: SlideId, field_index: int) -> Response:
        stored = desk.store.field_image(slide_id, field_index)
        if stored is None:
            raise HTTPException(404, f"no image of field {field_index} of slide {slide_id}")
        return Response(stored[0], media_type="image/jpeg", headers=IMAGE_CACHE)

    @router.get("/api/slides/{slide_id}/{name}", response_class=Response, tags=["reports"])
    def report(
        slide_id: SlideId,
        name: Literal["report.pdf", "report.fhir.json", "report.hl7", "report.csv", "cells.csv"],
        paper: Literal["a4", "letter"] = "a4",
        inline: Annotated[bool, Query(description="open the PDF in the browser (to print)")] = False,
    ) -> Response:
        """The lab report, signed or preliminary, in one of its formats."""
        fmt = REPORT_FORMAT[name]
        content = load_report(desk.store, slide_id)
        data = render(content, desk.store, config, fmt, paper)
        # the specimen id is typed by a person: only safe characters reach the header and the file name
        stem = re.sub(
            r"[^A-Za-z0-9._-]", "_", f"{content.specimen_id or slide_id}-{content.status}{content.version or ''}"
        )
        disposition = f'{"inline" if inline and fmt == "pdf" else "attachment"}; filename="{stem}-{name}"'
        return Response(data, media_type=MEDIA[fmt], headers={"Content-Disposition": disposition})

    @router.post("/api/slides/{slide_id}/reclassify", response_model=ReclassifyOut)
    def reclassify(slide_id: SlideId, body: ReclassifyIn, session: Session = signed_in) -> ReclassifyOut:
        changes = desk.reclassify(slide_id, body.cells, body.to, session.operator, body.amend_reason)
        return ReclassifyOut(changed=changes, revision=desk.store.revision(slide_id))

    @router.post("/api/slides/{slide_id}/sign", response_model=SignOut)
    def sign(slide_id: SlideId, body: SignIn, session: Session = signed_in) -> SignOut:
        """Sign the reviewed counts as they are in the store when the sign-off is written."""
        try:
            # the session proved the operator; wrong PINs here count against this session, not the name
            message = desk.sign(slide_id, session.operator, body.pin, revision=body.revision, from_session=True)
        except PinError:
            session.pin_failures += 1
            if session.pin_failures >= THROTTLE_FAILURES:
                sessions.end(session)
                log.warning(
                    "display: %s signed out after %d wrong PINs at sign-off", session.operator, THROTTLE_FAILURES
                )
                raise HTTPException(401, f"{THROTTLE_FAILURES} wrong PINs: signed out; sign in again") from None
            raise
        return SignOut(version=message.version, status=message.status)

    return router
