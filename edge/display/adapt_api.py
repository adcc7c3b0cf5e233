"""The review page's "Adapt to this microscope" (issue 41): one adaptation at a time, in a thread.

- ``GET /api/adaptation``: where it stands (idle, running with its step and share done, accepted or refused
  with the gate's table, failed with the reason, activated).
- ``POST /api/adaptation`` {corrected_only?}: adapt the config's bundle from the store's signed slides into
  a candidate folder beside the installed bundles (signed in).
- ``POST /api/adaptation/activate`` {pin}: install the accepted candidate in place of the config's bundle
  (the base kept for ``marrow-edge bundle rollback``), under the operator's PIN; the count path takes it
  at its next start.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from edge.config import AppConfig
from edge.display.auth import Session, operator_session
from edge.review.desk import PinError, ReviewDesk

log = logging.getLogger(__name__)
CANDIDATES = ".candidates"


class AdaptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    corrected_only: bool = Field(False, description="Only cells a person relabelled (default: every signed cell).")


class ActivateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: str = Field(max_length=256)


class AdaptationOut(BaseModel):
    state: Literal["idle", "running", "accepted", "refused", "failed", "activated"]
    step: str = ""
    done: float = 0.0
    operator: str | None = None
    started: str | None = None
    base: str | None = None
    version: str | None = None
    cells_per_type: dict[str, int] = Field(default_factory=dict)
    table: list[dict[str, Any]] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    error: str | None = None
    note: str | None = None


class Adaptation:
    """The one job; every read and write of its state under one lock."""

    def __init__(self, desk: ReviewDesk, config: AppConfig) -> None:
        self.desk, self.config = desk, config
        self.lock = threading.Lock()
        self.state = AdaptationOut(state="idle")
        self.candidate: Path | None = None

    def _set(self, **change: Any) -> None:
        with self.lock:
            self.state = self.state.model_copy(update=change)

    def start(self, operator: str, corrected_only: bool) -> AdaptationOut:
        with self.lock:
            if self.state.state == "running":
                raise HTTPException(409, f"an adaptation started by {self.state.operator} is running")
            started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            self.state = AdaptationOut(state="running", step="reading cells", operator=operator, started=started)
        threading.Thread(target=self._run, args=(operator, corrected_only), daemon=True, name="adapt").start()
        return self.state

    def _run(self, operator: str, corrected_only: bool) -> None:
        from edge.adaptation.adapt import adapt_bundle
        from edge.adaptation.sources import cells_from_store
        from edge.engines.bundle import load_bundle

        try:
            base = load_bundle(self.config.bundle)
            self._set(base=f"{base.manifest.name} {base.manifest.version}")
            cells = cells_from_store(self.desk.store.path, base.manifest.classifier.crop_size, corrected_only)
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            out = self.config.bundles_dir / CANDIDATES / f"{base.manifest.name}-{stamp}"
            outcome = adapt_bundle(
                base, cells, out, operator, progress=lambda step, done: self._set(step=step, done=done)
            )
            self.candidate = outcome.out
            self._set(
                state="accepted" if outcome.verdict.accepted else "refused",
                step="done",
                done=1.0,
                version=outcome.version,
                cells_per_type=outcome.cells_per_type,
                table=outcome.verdict.table(),
                reasons=outcome.verdict.reasons,
            )
        except Exception as exc:  # shown on the page; nothing was installed
            log.warning("adaptation failed: %s", exc)
            self._set(state="failed", error=str(exc) or type(exc).__name__)

    def activate(self, operator: str, pin: str) -> AdaptationOut:
        from edge.engines.library import BundleLibrary

        if not self.desk.operators.verify(operator, pin, count=False):
            raise PinError("PIN not accepted")
        with self.lock:
            if self.state.state != "accepted" or self.candidate is None:
                raise HTTPException(409, "no accepted adaptation to activate")
            library = BundleLibrary(self.config.bundles_dir)
            installed = self.config.bundle.resolve().parent == self.config.bundles_dir.resolve()
            if not installed:
                raise HTTPException(
                    409,
                    f"the config's bundle {self.config.bundle} is not an installed bundle: install it with "
                    f"`marrow-edge bundle install {self.candidate} --name NAME` and point bundle at NAME",
                )
            bundle = library.install(self.candidate, self.config.bundle.name)
            shutil.rmtree(self.candidate, ignore_errors=True)
            self.candidate = None
            note = (
                f"{bundle.manifest.version} installed as {self.config.bundle.name} by {operator}; the count path "
                f"uses it from its next start; `marrow-edge bundle rollback {self.config.bundle.name}` goes back"
            )
            log.info("adaptation activated: %s", note)
            self.state = self.state.model_copy(update={"state": "activated", "note": note})
            return self.state


def adaptation_router(desk: ReviewDesk, config: AppConfig) -> APIRouter:
    router = APIRouter(tags=["adaptation"])
    job = Adaptation(desk, config)
    signed_in = Depends(operator_session)

    @router.get("/api/adaptation", response_model=AdaptationOut)
    def status() -> AdaptationOut:
        with job.lock:
            return job.state

    @router.post("/api/adaptation", response_model=AdaptationOut, status_code=202)
    def start(body: AdaptIn, session: Session = signed_in) -> AdaptationOut:
        return job.start(session.operator, body.corrected_only)

    @router.post("/api/adaptation/activate", response_model=AdaptationOut)
    def activate(body: ActivateIn, session: Session = signed_in) -> AdaptationOut:
        return job.activate(session.operator, body.pin)

    return router
