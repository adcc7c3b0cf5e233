"""One field in, one FieldResult out: detect -> crop -> classify -> countable decision.

The model part (detector, crops, classifier) sits behind :class:`FieldModel`: the host
path here runs two backends with crops cut on the CPU; the fused GPU path
(``edge.analysis.torch_fused``) keeps the field on the device. Both return
:class:`FieldOutputs`; the countable decision and the result are the same for either.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edge.analysis.classify import Classifier
from edge.analysis.colour import cell_colour_features, white_balance
from edge.analysis.crops import crop_cells
from edge.analysis.detect import Detector
from edge.analysis.scale import FieldPlan, scale_factor, tile_overlap
from edge.engines.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldOutputs:
    """What the models say about one field, before any decision."""

    boxes: np.ndarray  # (K, 4) float32 x1, y1, x2, y2 in field pixels
    scores: np.ndarray  # (K,) detector scores
    p_countable: np.ndarray  # (K,) stage-1 P(countable)
    probs: np.ndarray  # (K, C) stage-2 ensemble mean
    timings_ms: dict[str, float] = field(default_factory=dict)
    plan: FieldPlan | None = None  # how the field reached the detector (its scale, its tiles)


class FieldModel(Protocol):
    """Detector + crops + classifier on one backend family."""

    name: str

    @property
    def providers(self) -> list[str]: ...

    def __call__(self, image: np.ndarray, boxes: np.ndarray | None = None) -> FieldOutputs:
        """``boxes`` given: classify those instead of the detector's (benchmarks fix the cell count so)."""
        ...

    def set_scale(self, factor: float | None, overlap: int = 0, tile: int | None = None) -> None:
        """Detector pixels per field pixel (``edge.analysis.scale``); None: fit each field to the input.
        ``tile``: the largest detector input side (None: the bundle's input_max_size)."""
        ...


class HostFieldModel:
    """Detector and classifier backends with the crops cut on the host (ONNX Runtime on the CPU)."""

    def __init__(self, detector: Detector, classifier: Classifier, crop_size: int, crop_margin: float) -> None:
        self.detector = detector
        self.classifier = classifier
        self.crop_size = crop_size
        self.crop_margin = crop_margin
        self.name = detector.backend.name

    @property
    def providers(self) -> list[str]:
        return self.detector.backend.providers

    def set_scale(self, factor: float | None, overlap: int = 0, tile: int | None = None) -> None:
        self.detector.factor, self.detector.overlap, self.detector.tile = factor, overlap, tile

    def __call__(self, image: np.ndarray, boxes: np.ndarray | None = None) -> FieldOutputs:
        return self.classify(self.detect(image, boxes))

    def detect(self, image: np.ndarray, boxes: np.ndarray | None = None) -> DetectedField:
        """Stage 1: the detector and the crops (``edge.analysis.overlap`` runs it a field ahead)."""
        t0 = time.perf_counter()
        detections = self.detector(image)
        t1 = time.perf_counter()
        if boxes is None:
            boxes, scores = detections.boxes, detections.scores
        else:
            boxes, scores = np.asarray(boxes, np.float32), np.ones(len(boxes), np.float32)
        crops = crop_cells(image, boxes, self.crop_size, self.crop_margin)
        t2 = time.perf_counter()
        timings = {"detect": (t1 - t0) * 1e3, "crop": (t2 - t1) * 1e3}
        return DetectedField(boxes, scores, crops, timings, detections.plan)

    def classify(self, detected: DetectedField) -> FieldOutputs:
        """Stage 2: the fused classifier on the crops."""
        t0 = time.perf_counter()
        p_countable, probs = self.classifier(detected.crops)
        timings = detected.timings_ms | {"classify": (time.perf_counter() - t0) * 1e3}
        return FieldOutputs(detected.boxes, detected.scores, p_countable, probs, timings, detected.plan)


@dataclass(frozen=True)
class DetectedField:
    """A field after stage 1: its boxes, their scores and the crops the classifier takes."""

    boxes: np.ndarray
    scores: np.ndarray
    crops: np.ndarray
    timings_ms: dict[str, float]
    plan: FieldPlan | None = None


@dataclass(frozen=True)
class Cell:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in field pixels
    detector_score: float
    class_name: str
    class_probability: float
    probabilities: np.ndarray  # (C,) stage-2 ensemble mean, in the bundle's class order
    p_countable: float
    countable: bool
    colour: tuple[float, ...] | None = None  # stain features for the domain-shift guard
    why_not: str | None = None  # why a cell is not counted, in words (None: counted)


@dataclass(frozen=True)
class FieldScale:
    """The scale one field was detected at: its camera's, the factor to the detector's, the tiles."""

    um_per_px: float | None  # the camera's (config or calibrate-scale); None: not known
    factor: float  # detector pixels per field pixel
    tiles: int  # detector inputs the field was cut into


@dataclass(frozen=True)
class FieldResult:
    index: int
    source: str
    width: int
    height: int
    cells: list[Cell]
    timings_ms: dict[str, float] = field(default_factory=dict)
    scale: FieldScale | None = None

    @property
    def countable_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.countable]


class FieldAnalyzer:
    """Everything the count path does to one field, on whatever model it was given."""

    def __init__(
        self,
        bundle: Bundle,
        model: FieldModel,
        countable_threshold: float | None = None,
        colour_features: bool | None = None,
        um_per_px: float | None = None,
        tile: int | None = None,
    ) -> None:
        """``colour_features``: take each cell's stain features (None: when the bundle has a domain
        guard to feed; True: always, as the guard's calibration needs them before it exists).
        ``um_per_px``: the camera's scale; with the bundle's (``scale`` in bundle.json) every field is
        brought to the scale the detector learned, in tiles of at most ``tile`` px where large
        (``edge.analysis.scale``)."""
        spec = bundle.manifest.classifier
        self.model = model
        self.countable_threshold = spec.countable_threshold if countable_threshold is None else countable_threshold
        self.class_names = bundle.class_names
        self._never_counted = np.array([c.role == "not_countable" for c in bundle.manifest.classes])
        self.colour_normalisation = bundle.manifest.colour_normalisation
        self._guarded = bundle.manifest.domain_guard is not None if colour_features is None else colour_features
        self.bundle_scale = bundle.manifest.scale
        self.um_per_px = um_per_px
        self.factor = scale_factor(um_per_px, self.bundle_scale)
        if um_per_px is not None and self.bundle_scale is None:
            log.warning(
                "bundle %s records no scale: the camera's %.4f um/px is not used, fields are fitted to the "
                "detector's input as before", bundle.manifest.name, um_per_px,
            )  # fmt: skip
        model.set_scale(self.factor, tile_overlap(self.bundle_scale), tile)

    def _why_not(self, p_countable: float, winner: int) -> str | None:
        """Why a cell is left out of the count, in the technician's words; None: it counts."""
        if p_countable < self.countable_threshold:
            # stage 1 learned artefacts, smudges, platelets, border-cut and defocused cells
            return "stage 1: artefact, cut by the border or out of focus"
        if self._never_counted[winner]:
            return f"{self.class_names[winner].replace('_', ' ')} is never counted"
        return None

    def __call__(self, image: np.ndarray, index: int = 0, source: str = "") -> FieldResult:
        timings = {}
        if self.colour_normalisation == "background":
            t0 = time.perf_counter()
            image = white_balance(image)
            timings["colour"] = (time.perf_counter() - t0) * 1e3
        out = self.model(image)
        colours = cell_colour_features(image, out.boxes) if self._guarded and len(out.boxes) else None
        winners = out.probs.argmax(axis=1) if len(out.probs) else np.empty(0, np.int64)
        why_not = [self._why_not(float(out.p_countable[i]), int(winners[i])) for i in range(len(winners))]
        cells = [
            Cell(
                box=tuple(float(v) for v in out.boxes[i]),  # type: ignore[arg-type]
                detector_score=float(out.scores[i]),
                class_name=self.class_names[winners[i]],
                class_probability=float(out.probs[i, winners[i]]),
                probabilities=out.probs[i],
                p_countable=float(out.p_countable[i]),
                countable=why_not[i] is None,
                colour=tuple(round(float(v), 5) for v in colours[i]) if colours is not None else None,
                why_not=why_not[i],
            )
            for i in range(len(winners))
        ]
        # the scale the model detected this field at (a model that reports no plan: none recorded)
        plan = out.plan
        scale = FieldScale(self.um_per_px, round(plan.factor, 5), len(plan.tiles)) if plan is not None else None
        return FieldResult(index, source, image.shape[1], image.shape[0], cells, timings | dict(out.timings_ms), scale)
