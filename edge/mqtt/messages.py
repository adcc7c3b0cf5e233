"""MQTT payloads. Every message carries schema_version, device_id, seq, a unique message_id
(consumers de-duplicate on it) and UTC time; results also carry their provenance."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.counting.rules import RuleOutcome

SCHEMA_VERSION = "1.0"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class BundleRef(_Model):
    name: str
    version: str
    hash: str = Field(description="First 12 hex digits of the sha256 of bundle.json.")
    untrained: bool = Field(description="Random weights: the counts mean nothing clinically.")
    trained_on: str | None = Field(None, description="peripheral_blood, bone_marrow or untrained (from the bundle).")
    clinical_use: bool = Field(False, description="Validated for clinical use.")


class Provenance(_Model):
    software_version: str
    bundle: BundleRef
    backend: str
    providers: list[str] = Field(description="Execution providers that really run the models.")


class Envelope(_Model):
    schema_version: str = SCHEMA_VERSION
    message_id: str = Field(
        description="Unique per message (32 hex); use it to de-duplicate. A slide's field, tally and report "
        "messages derive it from the device, slide and field (or report), so a re-send after a crash or a "
        "restart carries the same id."
    )
    device_id: str
    seq: int = Field(ge=0, description="Per-device sequence number, increasing within one run.")
    time: dt.datetime = Field(description="UTC time the message was made.")


class CameraState(_Model):
    state: Literal["streaming", "reconnecting", "absent"] = Field(
        description="streaming: frames flow; reconnecting: it went away and is being reopened with backoff; "
        "absent: it cannot be opened (unplugged, busy, no permission)."
    )
    detail: str = Field(description="The camera, or why it is not streaming.")


class StatusMessage(Envelope):
    kind: Literal["status"] = "status"
    state: Literal["online", "offline", "stopped"]
    provenance: Provenance | None = None
    camera: CameraState | None = Field(None, description="The live camera's state; absent for file replays.")
    instance: str | None = Field(
        None,
        description="Random id of this run of the appliance: two different instances online under one device "
        "id are two boxes configured alike (each refuses to go on).",
    )


class GateMessage(Envelope):
    """A field-gate decision; sent when the decision changes, and for every accepted field."""

    kind: Literal["gate"] = "gate"
    decision: Literal["accepted", "moving", "settling", "blurred", "dark", "bright", "already_counted"]
    reason: str = Field(description="In words, for the display, e.g. 'stage moving (40 px/frame)'.")
    frame: int = Field(ge=0, description="Frames the gate has seen on this slide.")
    position: tuple[float, float] = Field(description="Stage position on the slide (px), from image registration.")
    sharpness_ratio: float = Field(description="Focus against the slide's sharpest still frame.")
    brightness: float = Field(description="Mean grey level 0-255.")
    overlap: float = Field(description="Share of this field already counted.")


class PreviewCell(_Model):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in preview-image pixels.")
    class_name: str = Field(alias="class")
    label: str = Field(description="Short label for the box (the class's first alias).")
    probability: float
    countable: bool
    why_not: str | None = Field(None, description="Why a cell is not counted, in words (None: it is counted).")


class PreviewMessage(Envelope):
    """A small JPEG of the newest frame with the cells found on it; local only, never bridged."""

    kind: Literal["preview"] = "preview"
    jpeg: str = Field(description="Base64 JPEG, at most preview.max_width wide.")
    width: int = Field(description="Preview image width (px).")
    height: int
    scale: float = Field(description="Preview pixels per field pixel.")
    classes: list[str] = Field(description="The bundle's classes in order (for stable colours).")
    cells: list[PreviewCell] | None = Field(
        description="Cells on this frame; null when it was not analysed (the count path was busy or the "
        "stage moved since the last analysis)."
    )
    counted: bool = Field(description="This frame is a field that was just counted.")
    slide_id: str | None = None
    field_index: int | None = None
    gate: str | None = Field(None, description="The field gate's decision on this frame (live camera).")
    gate_reason: str | None = None


class GpuOut(_Model):
    name: str
    source: Literal["nvml", "jetson"] = Field(description="NVML (workstation GPUs) or the Jetson's sysfs.")
    utilisation_percent: float | None
    memory_used_mb: float | None = Field(description="On a Jetson: the memory the CPU and GPU share.")
    memory_total_mb: float | None
    temperature_c: float | None


class LisBacklogOut(_Model):
    """Signed reports not yet accepted by the LIS (``reports.lis``): a dashboard's "stuck reports"."""

    pending: int = Field(ge=0, description="Waiting to be sent or retried.")
    rejected: int = Field(ge=0, description="Refused by the LIS or given up after every attempt: a person must act.")
    oldest_s: int | None = Field(description="Age of the oldest undelivered report in seconds; null when none waits.")


class CpuOut(_Model):
    load_percent: float = Field(description="One-minute load average over the cores, in percent.")
    temperature_c: float | None = Field(description="The hottest thermal zone; null where none is readable.")


class HealthMessage(Envelope):
    """Periodic health of the box (``mqtt.health_interval_s``)."""

    kind: Literal["health"] = "health"
    uptime_s: float
    frames_per_s: float = Field(description="Camera frames the gate looked at (live) or fields read (replay).")
    fields_counted: int
    fields_skipped: int
    stage_ms_p50: dict[str, float] = Field(
        description="Median per stage over the last fields; frame_to_published: frame taken -> its messages sent."
    )
    drops: dict[str, int] = Field(description="ring_skipped (frames never seen), publish_failures.")
    queues: dict[str, int] = Field(description="mqtt_unacknowledged, outbox_rows.")
    outbox_alarm: bool = Field(description="The outbox is over its size bound: the lab link needs attention.")
    backend: str
    memory_mb: float = Field(description="Resident memory of the count process.")
    disk_free_mb: float | None = Field(None, description="Free space where the journal and outbox live.")
    disk_alarm: bool = Field(False, description="Under 200 MB free there: the journal will soon fail.")
    gpu: GpuOut | None = Field(None, description="The GPU's load, memory and temperature; null without one.")
    lis: LisBacklogOut | None = Field(None, description="The LIS backlog; null when no LIS is configured.")
    cpu: CpuOut | None = Field(None, description="The CPU's load and temperature; null where not readable.")
    interval_s: float | None = Field(
        None, gt=0, description="Seconds to the next health message: a dashboard calls the box offline after it."
    )
    scale: str | None = Field(
        None,
        description="The camera scale in use and, once a slide has cells, whether they are the size the detector "
        "works at (an objective or camera changed, or no scale set), in words; null before the first field.",
    )


class CellOut(_Model):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in field pixels.")
    detector_score: float
    class_name: str = Field(alias="class")
    class_probability: float
    p_countable: float
    countable: bool
    probabilities: dict[str, float] = Field(description="Stage-2 ensemble mean, per class.")


class FieldScaleOut(_Model):
    um_per_px: float | None = Field(description="The camera's scale in use; None: not set, the field was fitted.")
    factor: float = Field(description="Detector pixels per field pixel: how the field was resized for the detector.")
    tiles: int = Field(ge=1, description="Detector inputs the field was cut into at that scale.")


class FieldMessage(Envelope):
    kind: Literal["field"] = "field"
    slide_id: str
    specimen_id: str | None
    field_index: int
    source: str
    width: int
    height: int
    cells: list[CellOut]
    countable_in_field: int
    timings_ms: dict[str, float]
    scale: FieldScaleOut | None = Field(None, description="The scale the field was detected at (issue 46).")
    provenance: Provenance


class ShareOut(_Model):
    class_name: str = Field(alias="class")
    count: int
    percent: float
    ci_low: float
    ci_high: float


class RuleOut(_Model):
    id: str
    label: str
    class_name: str = Field(alias="class")
    threshold_percent: float
    percent: float | None
    ci_low: float | None
    ci_high: float | None
    state: RuleOutcome
    cells_to_settle: int | None
    note: str


class SkippedOut(_Model):
    source: str
    reason: str


class DomainOut(_Model):
    state: Literal["ok", "shifted", "too_few_cells", "not_checked"] = Field(
        description="shifted: the slide is unlike the bundle's training data; counts not reliable, rules held "
        "indeterminate. too_few_cells: not judged yet. not_checked: the bundle has no guard calibration."
    )
    colour_distance: float | None
    mean_confidence: float | None
    cells: int = Field(description="Counted cells judged (too_few_cells: cells still needed).")
    message: str
    um_per_px: float | None = Field(None, description="The camera's scale in use (None: not set, fields fitted).")
    cell_size_ratio: float | None = Field(
        None,
        description="The slide's median cell box side at the detector over the one the bundle's detector works at; "
        "beyond 1.35x either way the slide is shifted (objective or camera changed, or no scale set).",
    )
    scale: str = Field("", description="The scale in words, for the display and reports.")


class TallyMessage(Envelope):
    kind: Literal["tally"] = "tally"
    slide_id: str
    specimen_id: str | None
    started: dt.datetime
    fields: int
    fields_skipped: int
    cells_detected: int
    countable: int = Field(description="Cells in the denominator of the percentages.")
    not_countable: int
    counts: dict[str, int]
    target_count: int
    progress: float = Field(ge=0.0, le=1.0)
    confidence: float
    shares: list[ShareOut]
    rules: list[RuleOut]
    domain: DomainOut | None = Field(None, description="The domain-shift guard's verdict on this slide.")
    flagged: int = Field(0, ge=0, description="Counted cells whose top class probability is under review_below.")
    review_below: float = Field(0.0, ge=0.0, le=1.0, description="The top probability under which a cell is flagged.")
    disclaimer: str
    provenance: Provenance


class ReportMessage(TallyMessage):
    kind: Literal["report"] = "report"  # type: ignore[assignment]
    ended: dt.datetime
    target_reached: bool
    skipped: list[SkippedOut]


class ChangeOut(_Model):
    cell_id: int
    field_index: int
    old: str = Field(description="Where the cell was: a class, or not_countable.")
    new: str


class AuditOut(_Model):
    time: dt.datetime
    operator: str
    action: Literal["reclassify", "sign", "amend"]
    cell_id: int | None
    old: str | None
    new: str | None
    note: str | None


class ReviewMessage(Envelope):
    kind: Literal["review"] = "review"
    slide_id: str
    specimen_id: str | None
    operator: str = Field(description="Who made the change (signed in with name and PIN).")
    changes: list[ChangeOut]
    amendment: bool = Field(description="A change to a signed slide: the next sign-off is an amendment.")
    machine_counts: dict[str, int] = Field(description="The machine's count, as the slide was counted.")
    reviewed_counts: dict[str, int] = Field(description="The count with every review so far (preliminary).")
    countable: int = Field(description="Cells in the denominator after the review.")
    provenance: Provenance


class SignedReportMessage(ReportMessage):
    """The reviewed report as signed: the counts, intervals and rules are the reviewed ones."""

    kind: Literal["signed"] = "signed"  # type: ignore[assignment]
    status: Literal["final", "amended"] = Field(description="final: first sign-off; amended: a later version.")
    version: int = Field(ge=1, description="1 for the first sign-off, +1 per amendment (older versions are kept).")
    operator: str
    signed_at: dt.datetime
    reason: str | None = Field(None, description="Why the slide was amended (amendments only).")
    machine_counts: dict[str, int]
    cells_reviewed: int = Field(description="Cells a person placed in another class or tray.")
    audit: list[AuditOut] = Field(description="Every change and sign-off of the slide, oldest first.")


class CurrentSlideMessage(Envelope):
    """What a dashboard shows of the box now: the slide being counted, or the last one finished."""

    kind: Literal["current"] = "current"
    state: Literal["idle", "counting", "finished"] = Field(
        description="idle: no slide since the box started; counting; finished: the report is out."
    )
    slide_id: str | None
    specimen_id: str | None
    started: dt.datetime | None
    ended: dt.datetime | None
    fields: int
    cells_counted: int = Field(description="Cells in the denominator of the percentages.")
    target_count: int | None
    progress: float = Field(ge=0.0, le=1.0)
    percent: dict[str, float] = Field(description="Per class, of the counted cells.")
    intervals: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Per class, the 95% interval of its percentage (low, high)."
    )
    rules: dict[str, RuleOutcome] = Field(description="Each rule's state, by rule id.")
    rule_state: RuleOutcome = Field(
        description="The slide's call: positive if any rule is, else indeterminate if any is, else negative "
        "(not_applicable when no rule applies)."
    )
    domain: str = Field(description="The domain-shift guard: ok, shifted, too_few_cells or not_checked.")
    topic: str | None = Field(description="The slide's report topic (its tally while counting).")


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(by_alias=True).encode("utf-8")
