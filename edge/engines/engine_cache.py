"""The TensorRT engine cache: a plan is used only on the GPU, TensorRT and model it was built for.

A TensorRT plan is specific to the GPU model (compute capability), the TensorRT version,
the ONNX graph, the precision and the optimisation profile. Each plan sits in
``<cache>/<model>-<key digest>.plan`` with a sidecar ``.json`` holding the full key; a plan
is loaded only when its sidecar matches the key of this machine exactly. A stale plan (a
bundle update, a GPU swap, a TensorRT upgrade) is rebuilt or refused, by config, and never
deserialised: a wrong plan can crash the process or silently compute garbage.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.errors import EngineError

log = logging.getLogger(__name__)

OnMismatch = Literal["rebuild", "refuse"]


class EngineKey(BaseModel):
    """Everything a plan depends on. Two equal keys mean the same plan would be built."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="detector or classifier")
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    gpu_name: str
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    tensorrt_version: str
    precision: Literal["fp16", "fp32"]
    strongly_typed: bool = Field(description="TensorRT 11: precision comes from the ONNX graph's types.")
    profile: dict[str, list[list[int]]] = Field(description="Input name -> [min, opt, max] shapes.")

    @property
    def digest(self) -> str:
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


class EngineRecord(BaseModel):
    """The sidecar written next to each plan."""

    model_config = ConfigDict(extra="forbid")

    key: EngineKey
    plan_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    built: str
    build_seconds: float
    verification: dict[str, Any] = Field(default_factory=dict)


def plan_paths(cache: Path, key: EngineKey) -> tuple[Path, Path]:
    stem = f"{key.model}-{key.digest}"
    return cache / f"{stem}.plan", cache / f"{stem}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stale_records(cache: Path, key: EngineKey) -> list[EngineRecord]:
    """Sidecars of the same model built under another key (what a mismatch message names)."""
    stale = []
    for sidecar in sorted(cache.glob(f"{key.model}-*.json")):
        try:
            record = EngineRecord.model_validate_json(sidecar.read_text())
        except (ValidationError, OSError):
            continue
        if record.key != key:
            stale.append(record)
    return stale


def describe_difference(old: EngineKey, new: EngineKey) -> str:
    fields = [
        f"{name}: {getattr(old, name)!s:.40} -> {getattr(new, name)!s:.40}"
        for name in type(new).model_fields
        if getattr(old, name) != getattr(new, name)
    ]
    return "; ".join(fields) or "identical"


def find_plan(cache: Path, key: EngineKey, on_mismatch: OnMismatch) -> Path | None:
    """The cached plan for ``key``, or None when it must be built.

    A plan whose sidecar is missing, unreadable, of another key or whose bytes changed is
    never returned. With ``refuse``, a missing plan where a stale one exists is an error
    naming what changed, so an operator sees a GPU or TensorRT change before a long build.
    """
    plan, sidecar = plan_paths(cache, key)
    if plan.is_file() and sidecar.is_file():
        try:
            record = EngineRecord.model_validate_json(sidecar.read_text())
        except (ValidationError, OSError) as exc:
            log.warning("engine sidecar %s unreadable (%s): ignoring its plan", sidecar, exc)
        else:
            if record.key == key and record.plan_sha256 == _sha256(plan):
                return plan
            log.warning("engine %s does not match its sidecar: ignoring it", plan)
    if on_mismatch == "refuse":
        stale = _stale_records(cache, key)
        detail = "; ".join(describe_difference(r.key, key) for r in stale) if stale else "no engine built yet"
        raise EngineError(
            f"no TensorRT engine for {key.model} matching this machine in {cache} ({detail}); "
            "run the engine build (marrow-edge-engines.service) or set engine.on_engine_mismatch: rebuild"
        )
    return None


def store_plan(
    cache: Path, key: EngineKey, plan_bytes: bytes, build_seconds: float, verification: dict[str, Any]
) -> Path:
    """Write plan and sidecar atomically (a crash mid-write leaves no half plan with a valid sidecar)."""
    cache.mkdir(parents=True, exist_ok=True)
    plan, sidecar = plan_paths(cache, key)
    tmp_plan = plan.with_suffix(".plan.tmp")
    tmp_plan.write_bytes(plan_bytes)
    os.replace(tmp_plan, plan)
    record = EngineRecord(
        key=key,
        plan_sha256=_sha256(plan),
        built=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(build_seconds, 1),
        verification=verification,
    )
    tmp_sidecar = sidecar.with_suffix(".json.tmp")
    tmp_sidecar.write_text(record.model_dump_json(indent=2) + "\n")
    os.replace(tmp_sidecar, sidecar)
    for old in _stale_records(cache, key):
        old_plan, old_sidecar = plan_paths(cache, old.key)
        for path in (old_plan, old_sidecar):
            path.unlink(missing_ok=True)
        log.info("removed stale engine %s (%s)", old_plan.name, describe_difference(old.key, key))
    return plan
