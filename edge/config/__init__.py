"""The appliance configuration: one pydantic tree, loaded from YAML, with environment overrides.

Environment overrides use the prefix ``MARROW_EDGE__`` and ``__`` between levels, e.g.
``MARROW_EDGE__MQTT__URL=mqtt://broker:1883`` or ``MARROW_EDGE__COUNTING__TARGET_COUNT=500``.
Values are parsed as YAML scalars, so numbers and booleans keep their types.
Secrets (the MQTT password) come from the environment or a credentials file, never the repo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator

from edge.config.base import BUNDLES_DIR, DEFAULT_BUNDLE, DEFAULT_SAMPLES, PACKAGE_ROOT, Strict
from edge.config.engines import (
    ENGINE_TYPES,
    EngineConfig,
    OnnxRuntimeEngine,
    TensorRTEngine,
    TorchEngine,
)
from edge.config.mqtt import MqttConfig, parse_mqtt_url
from edge.config.records import LisConfig, ReportsConfig, ReviewConfig
from edge.config.sources import (
    GenICamSource,
    GStreamerSource,
    ReplaySource,
    RingSource,
    RtspSource,
    SimSource,
    SourceConfig,
    V4L2Source,
)
from edge.config.state import FILES, state_dir
from edge.config.web import DisplayConfig, FleetConfig
from edge.errors import ConfigError

__all__ = [
    "DEFAULT_BUNDLE",
    "DEFAULT_SAMPLES",
    "ENGINE_TYPES",
    "PACKAGE_ROOT",
    "AppConfig",
    "DisplayConfig",
    "EngineConfig",
    "FleetConfig",
    "GStreamerSource",
    "GenICamSource",
    "LisConfig",
    "MqttConfig",
    "OnnxRuntimeEngine",
    "ReplaySource",
    "ReportsConfig",
    "ReviewConfig",
    "RingSource",
    "RtspSource",
    "SimSource",
    "SourceConfig",
    "TensorRTEngine",
    "TorchEngine",
    "V4L2Source",
    "load_config",
    "parse_mqtt_url",
]

ENV_PREFIX = "MARROW_EDGE__"


class AnalysisConfig(Strict):
    score_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Detector score threshold; None takes the bundle's."
    )
    countable_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Stage-1 cut-off on P(countable); None takes the bundle's."
    )
    crop_margin: float | None = Field(
        None,
        ge=0.0,
        le=3.0,
        description="Context kept around each box, as a fraction of its longer side; "
        "None takes the bundle's (what its classifiers were trained with).",
    )
    max_batch: int = Field(32, ge=1, le=64, description="Crops per classifier call.")
    um_per_px: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description="The microscope camera's scale, micrometres per pixel, for any source that states none of its "
        "own (a ring, a replayed folder): `marrow-edge calibrate-scale` measures it. None: fields are fitted to "
        "the detector's input size whatever the camera, and cells of a large field shrink.",
    )
    tile_px: int = Field(
        2048,
        ge=256,
        le=4096,
        description="With a scale: the largest detector input side; a field larger at the bundle's scale is cut "
        "into tiles of this side overlapping by more than the largest cell (larger tiles overlap less: a 2448x2048 "
        "sensor at the usual scale fits whole; TensorRT engines are built for up to 2048).",
    )
    max_field_pixels: int = Field(
        50_000_000,
        ge=1024,
        description="Largest field (width x height) decoded; larger files are skipped before decoding "
        "(a 30000x30000 PNG would take 2.7 GB).",
    )


class CountingConfig(Strict):
    target_count: int = Field(
        300, ge=1, strict=True, description="Countable cells per slide (ICSH: 300-500 for a marrow differential)."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Level of the binomial intervals.")
    denominator_roles: list[Literal["wbc", "key", "other"]] = Field(
        default_factory=lambda: ["wbc", "key", "other"],
        description="Class roles that make up the denominator of the percentages.",
    )
    review_below: float = Field(
        0.70,
        ge=0.0,
        le=1.0,
        description="A counted cell whose top class probability is below this is flagged for review (the display "
        "says how many); 0 flags none. 0.70 for marrow-bm 2.0 (validation cells: 29% flagged, 71% of its wrong "
        "calls among them; 1.3.0 at its 0.55: 36% flagged, 74% caught).",
    )
    rules: Path | None = Field(None, description="YAML rule pack; None uses the embedded default.")
    journal: Path | None = Field(
        None,
        description="SQLite slide journal: the open slide survives a crash or restart and resumes without "
        "counting a field twice. Unset: slides.sqlite in the state directory (edge/config/state.py); null: "
        "memory only.",
    )
    journal_keep_days: float = Field(
        90, gt=0, description="Closed slides older than this are deleted from the journal when a run starts."
    )


class GateConfig(Strict):
    """When a live camera's frame counts as a field (edge.capture.gate); the gate reads these directly."""

    still_px: float = Field(2.0, ge=0, description="Shift per frame (px) under which the stage counts as still.")
    still_frames: int = Field(3, ge=1, description="Still frames in a row before a field may count.")
    focus_ratio: float = Field(
        0.2, gt=0, le=1, description="Sharpness against the slide's sharpest still frame below which: blurred."
    )
    dark_below: float = Field(40.0, ge=0, le=255, description="Mean grey level below which: too dark.")
    bright_above: float = Field(235.0, ge=0, le=255, description="Mean grey level above which: overexposed.")
    max_overlap: float = Field(
        0.3, ge=0, le=1, description="Share of the field already counted above which it is refused."
    )
    analysis_width: int = Field(320, ge=64, description="Frames are registered and scored at this width (px).")
    min_sharpness: float = Field(0.02, ge=0, description="Absolute sharpness floor, for a slide's first field.")
    max_clipped: float = Field(0.25, ge=0, le=1, description="Share of pixels at 250 or above beyond which: bright.")
    map_cell_px: int = Field(16, ge=1, description="Resolution of the counted-area map (full-resolution px).")
    min_response: float = Field(0.03, ge=0, description="Phase-correlation peak below which a shift is not trusted.")
    relocate_response: float = Field(0.15, ge=0, description="Peak needed to re-anchor on a counted field.")
    relocate_max_px: float = Field(150.0, ge=0, description="Larger corrections are false matches, not drift.")


class PreviewConfig(Strict):
    """The preview path (DESIGN 1): newest frame wins, boxes drawn by the display, never bridged."""

    enabled: bool = Field(True, description="Publish preview frames on <prefix>/<device>/preview (local only).")
    fps: float = Field(8.0, gt=0, le=30, description="Most preview frames per second.")
    max_width: int = Field(640, ge=64, le=4096, description="Preview JPEGs are scaled down to this width.")
    jpeg_quality: int = Field(70, ge=10, le=95)
    boxes: bool = Field(
        True,
        description="Live camera: detect and classify preview frames while the count path is idle, so the "
        "display shows boxes before a field is counted (boxes are reused while the stage stays still).",
    )
    box_refresh_s: float = Field(1.0, gt=0, description="Re-analyse a still view after this many seconds.")


class MetricsConfig(Strict):
    """Prometheus metrics of the count process (``/metrics``), for Grafana."""

    port: int | None = Field(None, ge=1, le=65535, description="Serve /metrics on this port; None: off.")
    host: str = Field("127.0.0.1", description="Address to serve on; 0.0.0.0 lets the lab's Prometheus scrape.")


class LoggingConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AppConfig(Strict):
    device_id: str = Field(
        "marrow-edge-dev",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Names this box in every topic and message.",
    )
    bundle: Path = Field(
        DEFAULT_BUNDLE,
        description="Model bundle: a folder holding bundle.json, or the name of one installed in bundles_dir "
        "(`marrow-edge bundle install`).",
    )
    bundles_dir: Path = Field(BUNDLES_DIR, description="Where `marrow-edge bundle install` puts bundles.")
    source: SourceConfig | None = Field(
        None, description="The camera (or ring) when the command line names none: the installed appliance's."
    )
    engine: EngineConfig = Field(default_factory=OnnxRuntimeEngine)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    counting: CountingConfig = Field(default_factory=CountingConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    preview: PreviewConfig = Field(default_factory=PreviewConfig)
    display: DisplayConfig = Field(default_factory=DisplayConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    reports: ReportsConfig = Field(default_factory=ReportsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _bundle_by_name(self) -> AppConfig:
        """``bundle: marrow-bm`` (a bare name that is not a folder here) is the installed bundle of that name."""
        b = self.bundle
        if len(b.parts) == 1 and not b.is_absolute() and not b.exists():
            object.__setattr__(self, "bundle", self.bundles_dir / b)  # no re-validation loop
        return self

    @model_validator(mode="before")
    @classmethod
    def _engine_type(cls, data: Any) -> Any:
        """``engine.type`` defaults to onnxruntime; ``engine.backend`` (its name before 0.2) is read as it."""
        if isinstance(data, dict) and isinstance(data.get("engine"), dict):
            engine = dict(data["engine"])
            if "backend" in engine and "type" not in engine:
                engine["type"] = engine.pop("backend")
            engine.setdefault("type", "onnxruntime")
            data = {**data, "engine": engine}
        return data


def _is_text(path: list[str]) -> bool:
    """Whether the config field at ``path`` takes text (str, a secret, a path, a string choice):
    such a value is taken as it is written, never parsed ('s3cret #1' stays whole, 123456 stays text)."""
    import typing

    models: list[Any] = [AppConfig]  # several where the field is a union (engine types)
    annotation: Any = None
    for part in path:
        found = next((m.model_fields[part] for m in models if part in getattr(m, "model_fields", {})), None)
        if found is None:
            return False
        annotation = found.annotation
        options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        models = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
    options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(v, str) for v in typing.get_args(annotation))
    return any(a in (str, SecretStr) or (isinstance(a, type) and issubclass(a, PurePath)) for a in options)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if raw == "":
            value = None
        elif _is_text(path):
            value = raw
        else:
            try:  # numbers, booleans, lists: YAML's reading of the value
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError(f"{name}: not a valid value (numbers, true/false or a [list])") from None
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _tags(union: Any) -> set[str]:
    """The ``type`` values of a discriminated union's members."""
    import typing

    return {m.model_fields["type"].default for m in typing.get_args(typing.get_args(union)[0])}


# Sections chosen by type: pydantic puts the chosen type in an error's location; the key a user wrote has none.
_UNION_TAGS = {"engine": _tags(EngineConfig), "source": _tags(SourceConfig)}


def _describe(error: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for item in error.errors():
        loc = list(item["loc"])
        if len(loc) > 1 and loc[1] in _UNION_TAGS.get(str(loc[0]), ()):
            del loc[1]  # a union's tag: the key is engine.<key> / source.<key> whatever the type
        key = ".".join(str(p) for p in loc) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AppConfig:
    """Defaults <- YAML file <- environment <- explicit overrides (from the command line)."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of keys")
        data = loaded or {}
        if isinstance(data.get("mqtt"), dict) and "password" in data["mqtt"]:
            raise ConfigError(
                f"config file {path}: mqtt.password must not be in a file that may be shared or committed; "
                "use mqtt.password_file, systemd LoadCredential=mqtt-password, or MARROW_EDGE__MQTT__PASSWORD"
            )
    env = _env_overrides(os.environ if environ is None else environ)
    if env:
        origin += " + environment"
    data = _merge(data, env)
    if overrides:
        data = _merge(data, dict(overrides))
    try:
        config = AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
    return with_state_paths(config)


def with_state_paths(config: AppConfig) -> AppConfig:
    """Fill every state path the config left unset (not: set to null) with its file in ``state_dir()``."""
    base = state_dir()
    slots = ((config.counting, "journal"), (config.mqtt, "outbox"), (config.review, "store"))
    for section, name in slots:
        if name not in section.model_fields_set:
            setattr(section, name, base / FILES[name])
            section.model_fields_set.discard(name)  # still "not set by the user" for a later merge
    return config
