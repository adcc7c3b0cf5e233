"""The model bundle: the contract between training/export and the appliance (DESIGN section 3).

A bundle is a folder with ``bundle.json`` (the :class:`BundleManifest`) and the ONNX files it
names. Every file carries a sha256; :func:`load_bundle` refuses a bundle whose files are
missing or changed, so a published result always names exactly the models that made it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.errors import BundleError

MANIFEST_NAME = "bundle.json"
FORMAT_VERSION = 1

Role = Literal["wbc", "key", "other", "not_countable"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    role: Role = Field(
        description="wbc: countable white cell; key: countable and named by a diagnostic rule; "
        "other: countable, the group of rare types; not_countable: never in the differential."
    )
    aliases: list[str] = Field(default_factory=list, description="Other names (data-set folder names).")
    description: str = ""


class TensorSpec(_Strict):
    name: str
    dtype: Literal["uint8", "float32", "int64"]
    shape: list[int | str] = Field(description="Dimensions; strings name dynamic axes.")


class ModelSpec(_Strict):
    file: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    architecture: str = Field(description="What is inside, e.g. 'retinanet/mobilenet_v3_large-fpn64'.")
    normalisation: str = Field(
        "inside graph: x/255, then (x-mean)/std per channel",
        description="Inputs are uint8 RGB NHWC; the graph normalises.",
    )


class DetectorSpec(ModelSpec):
    """The detector graph outputs every anchor; the appliance thresholds and suppresses."""

    labels: list[str] = Field(min_length=1, description="Detector labels, in the order of the score columns.")
    cell_labels: list[str] = Field(min_length=1, description="Labels the appliance classifies as cells.")
    score_threshold: float = Field(ge=0.0, le=1.0)
    nms_iou: float = Field(gt=0.0, le=1.0, description="IoU above which the lower-scoring box is dropped.")
    max_detections: int = Field(ge=1, description="Most cells kept per field, best scores first.")
    pre_nms_top_k: int = Field(1000, ge=1, description="Candidates entering NMS, best scores first.")
    input_min_size: int | None = Field(
        None,
        ge=32,
        description="The appliance resizes a field so its short side is this (long side at most "
        "input_max_size) before the graph, with OpenCV; the graph then runs at scale 1. None: the graph resizes.",
    )
    input_max_size: int | None = Field(None, ge=32)
    graph_resizes: bool = Field(
        True,
        description="True: the graph fits its input to input_min_size itself (torchvision's transform), so the "
        "appliance fits each field first and the graph runs at scale 1. False: the graph runs at the size it is "
        "given, so a field brought to the bundle's scale, or one tile of it, reaches it as it is.",
    )

    @model_validator(mode="after")
    def _cell_labels_known(self) -> DetectorSpec:
        unknown = set(self.cell_labels) - set(self.labels)
        if unknown:
            raise ValueError(f"cell_labels not among labels: {sorted(unknown)}")
        return self


class ClassifierSpec(ModelSpec):
    crop_size: int = Field(ge=32)
    crop_margin: float = Field(
        0.15,
        ge=0.0,
        le=3.0,
        description="Context around a box the classifiers were trained with "
        "(crop side = longer box side x (1 + margin)).",
    )
    countable_threshold: float = Field(ge=0.0, le=1.0, description="Stage-1 cut-off on P(countable).")
    field_crop_margin: float | None = Field(
        None,
        ge=0.0,
        le=3.0,
        description="Context the count path cuts around a detector's box, where it differs from crop_margin: the "
        "detector's boxes are not the training crops' boxes, so the margin is chosen on validation fields. "
        "None: crop_margin.",
    )
    training_crops: Literal["whole_image", "central_cell"] = Field(
        "whole_image",
        description="How single-cell training images became crops: whole_image (resized as they are) or "
        "central_cell (the central cell's box found and cut as the count path cuts: training.data.cells); "
        "evaluate cells scores crops the same way.",
    )
    stage1: str = Field(description="Architecture of the countable head.")
    stage2: list[str] = Field(min_length=1, description="Ensemble members (softmax averaged).")

    @property
    def count_margin(self) -> float:
        """The margin around a detector's box in the count path."""
        return self.crop_margin if self.field_crop_margin is None else self.field_crop_margin


class Parity(_Strict):
    """One PyTorch-vs-ONNX Runtime comparison made at export."""

    model: str
    output: str
    max_abs_diff: float
    tolerance: float
    inputs: str


class VerificationSpec(_Strict):
    """How close another runtime or precision (TensorRT, FP16, PyTorch CUDA) must stay to ONNX
    Runtime FP32 on fixed real fields before the appliance uses it."""

    box_iou: float = Field(0.5, gt=0.0, le=1.0, description="IoU at which two runtimes' boxes are the same cell.")
    min_detection_agreement: float = Field(
        0.95, ge=0.0, le=1.0, description="Matched boxes over the larger of the two box counts, all fields together."
    )
    min_class_agreement: float = Field(
        0.95, ge=0.0, le=1.0, description="Same winning class on the same crops (reference boxes)."
    )
    max_probability_diff: float = Field(
        0.05, gt=0.0, le=1.0, description="Largest difference of any class probability or P(countable)."
    )
    max_box_diff_px: float = Field(
        2.0,
        gt=0.0,
        description="Largest difference of a box corner (px) of an anchor that may become a cell "
        "(FP16's step near 640 px is 0.5 px).",
    )


class DomainGuardSpec(_Strict):
    """Calibration of the domain-shift guard (``edge.counting.domain``), made on validation cells."""

    features: Literal["od_colour_v1"] = "od_colour_v1"
    mean: list[float] = Field(min_length=1, description="Mean stain features of the training cells (residuals "
                              "when class_means is given).")  # fmt: skip
    inv_cov: list[list[float]] = Field(description="Inverse covariance of those features (per cell).")
    class_means: list[list[float]] | None = Field(
        None,
        description="Per bundle class, the mean stain features of the training cells called that class: each "
        "cell is compared with its own class, so a slide rich in one class (blasts) is not mistaken for a shift.",
    )
    max_colour_distance: float = Field(gt=0.0, description="Slide-mean Mahalanobis distance above which: shifted.")
    min_mean_confidence: float = Field(ge=0.0, le=1.0, description="Slide-mean top probability below which: shifted.")
    min_cells: int = Field(20, ge=1, description="Counted cells before the guard judges.")
    calibration: dict[str, Any] = Field(default_factory=dict, description="How the thresholds were set, and rates.")

    @model_validator(mode="after")
    def _square(self) -> DomainGuardSpec:
        n = len(self.mean)
        if len(self.inv_cov) != n or any(len(row) != n for row in self.inv_cov):
            raise ValueError(f"inv_cov must be {n}x{n}")
        if self.class_means is not None and any(len(row) != n for row in self.class_means):
            raise ValueError(f"every class_means row must have {n} features")
        return self


class ScaleSpec(_Strict):
    """The optical scale the detector learned its cells at, so the appliance can bring every camera's
    fields to it (``edge.analysis.scale``) and see when a slide's cells are not that size."""

    um_per_px: float = Field(gt=0.0, description="Micrometres per pixel of the detector's input for the cells "
                             "it learned (the middle of its training range).")  # fmt: skip
    range_um_per_px: tuple[float, float] = Field(
        description="The finest and the coarsest scale among its training fields (um per pixel)."
    )
    cell_side_px_p10: float = Field(gt=0.0, description="White-cell box side at that scale, 10th percentile (px).")
    cell_side_px_median: float = Field(gt=0.0, description="... median (px): what calibrate-scale matches.")
    cell_side_px_p90: float = Field(gt=0.0, description="... 90th percentile (px).")
    cell_side_px_max: float = Field(gt=0.0, description="... largest (px): tiles overlap by more than this.")
    cells: int = Field(ge=1, description="Training boxes measured.")
    how: str = Field(description="How the scale was measured, with its assumptions.")
    choice: dict[str, Any] = Field(default_factory=dict, description="The figures the working scale was chosen on.")

    @model_validator(mode="after")
    def _ordered(self) -> ScaleSpec:
        sides = (self.cell_side_px_p10, self.cell_side_px_median, self.cell_side_px_p90, self.cell_side_px_max)
        if list(sides) != sorted(sides):
            raise ValueError("cell_side_px p10 <= median <= p90 <= max")
        if not self.range_um_per_px[0] <= self.um_per_px <= self.range_um_per_px[1]:
            raise ValueError("um_per_px must lie within range_um_per_px")
        return self


class Int8Graphs(_Strict):
    """INT8 (QDQ) graphs of the detector and the fused classifier for ONNX Runtime on the CPU,
    made by ``build_engines.int8`` and kept only when they agreed with FP32 (see ``verification``)."""

    detector: str
    classifier: str
    calibration: str = Field(description="What the activation ranges were calibrated on.")
    verification: dict[str, Any] = Field(description="The comparison with FP32 that admitted them.")


class CellSet(_Strict):
    """Cells a box adapts with (edge.adaptation): per cell each stage-2 member head's input (float16)."""

    file: str = Field(description="npz: features_<i> (cells, dim) per member, labels (bundle class names).")
    cells: int = Field(ge=1)
    per_class: dict[str, int]
    sources: list[str] = Field(description="Data sets, splits and licences the cells come from.")


class AdaptationSpec(_Strict):
    """What site adaptation needs and a box has no other way to get: its own training data, in brief."""

    replay: CellSet = Field(description="Training cells: the adapted heads keep the base's outputs on them.")
    reference: CellSet = Field(description="Held-back cells: the gate's home figures before and after.")
    calibration: CellSet | None = Field(
        None, description="Validation cells: the guarded classes' confidence is restored on them after a fit."
    )


class SiteAdaptation(_Strict):
    """An adapted bundle's record: what it was adapted from, on what, and the gate that admitted it."""

    base: str = Field(description="name and version of the bundle it was adapted from")
    base_hash: str
    site: int = Field(ge=1, description="the n of +site.<n>")
    operator: str
    time: str
    slides: list[str] = Field(default_factory=list)
    cells_per_type: dict[str, int]
    gate: dict[str, Any] = Field(description="Before/after figures and the decision.")
    settings: dict[str, Any] = Field(default_factory=dict)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class BundleManifest(_Strict):
    format_version: Literal[1] = FORMAT_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: str
    profile: Literal["lite", "efflite", "paper"]
    untrained: bool = Field(description="True when the weights are random: results mean nothing clinically.")
    created: str
    classes: list[ClassSpec] = Field(min_length=2)
    detector: DetectorSpec
    classifier: ClassifierSpec
    files: dict[str, FileEntry]
    parity: list[Parity] = Field(default_factory=list)
    verification: VerificationSpec = Field(default_factory=VerificationSpec)
    torch_weights: str | None = Field(
        None,
        description="Folder in the bundle with the PyTorch state dicts the ONNX files were exported from "
        "(detector.pt, stage1.pt, stage2_<i>.pt), for the PyTorch backends; every file is listed in files.",
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict, description="Training data, recipe, metrics, commit, tool versions."
    )
    colour_normalisation: Literal["none", "background"] = Field(
        "none",
        description="background: each field is white-balanced by its brightest pixels before detection "
        "(edge.analysis.colour), as the training images were.",
    )
    domain_guard: DomainGuardSpec | None = Field(None, description="Domain-shift guard calibration; None: no guard.")
    trained_on: Literal["peripheral_blood", "bone_marrow", "untrained"] | None = Field(
        None, description="What the bundle was trained on, for the display's badge."
    )
    clinical_use: bool = Field(False, description="Validated for clinical use (never for a public-data bundle).")
    int8: Int8Graphs | None = Field(None, description="INT8 graphs for the CPU (engine.int8); None: none built.")
    scale: ScaleSpec | None = Field(
        None,
        description="The scale the detector learned (training.bundle.scale); None: fields are fitted to "
        "input_min_size whatever the camera, as before scales were recorded.",
    )

    adaptation: AdaptationSpec | None = Field(None, description="Cells for site adaptation; None: cannot adapt.")
    site: SiteAdaptation | None = Field(None, description="Set on a bundle adapted to a site's microscope.")

    @model_validator(mode="after")
    def _consistent(self) -> BundleManifest:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("class names are not unique")
        for spec in (self.detector, self.classifier):
            if spec.file not in self.files:
                raise ValueError(f"model file {spec.file} has no entry in files")
        for cells in (
            (self.adaptation.replay, self.adaptation.reference, self.adaptation.calibration) if self.adaptation else ()
        ):
            if cells is not None and cells.file not in self.files:
                raise ValueError(f"adaptation file {cells.file} has no entry in files")
        if self.scale is not None and self.detector.graph_resizes:
            raise ValueError("a scale needs a detector graph that runs at the size it is given (graph_resizes false)")
        return self


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: BundleManifest
    digest: str  # sha256 of bundle.json: it pins every file through their hashes

    @property
    def short_hash(self) -> str:
        return self.digest[:12]

    def path(self, file: str) -> Path:
        return self.root / file

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.manifest.classes]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(root: Path, verify: bool = True) -> Bundle:
    """Read and validate ``bundle.json``; with ``verify`` check every file's size and sha256."""
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"no model bundle at {root}: {MANIFEST_NAME} is missing (installed bundles: `marrow-edge bundle list`; "
            "add one with `marrow-edge bundle install DIR`)"
        ) from None
    except OSError as exc:
        raise BundleError(f"cannot read {manifest_path}: {exc.strerror}") from None
    try:
        manifest = BundleManifest.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BundleError(f"{manifest_path} is not a valid bundle manifest: {where}: {first['msg']}") from None
    if verify:
        for name, entry in manifest.files.items():
            _verify_file(root, name, entry)
    return Bundle(root=root, manifest=manifest, digest=hashlib.sha256(raw).hexdigest())


def _verify_file(root: Path, name: str, entry: FileEntry) -> None:
    path = root / name
    if not path.is_file():
        raise BundleError(f"bundle {root}: file {name} is missing; re-export the bundle or restore the file")
    size = path.stat().st_size
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise BundleError(
            f"bundle {root}: file {name} does not match its manifest "
            f"(sha256 {actual[:12]}..., {size} bytes; expected {entry.sha256[:12]}..., {entry.bytes} bytes): "
            "it was changed or damaged; re-export the bundle or restore the file"
        )


def write_manifest(root: Path, manifest: BundleManifest) -> Path:
    path = Path(root) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return path


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
