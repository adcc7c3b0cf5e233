"""One field in, one FieldResult out: detect -> crop -> classify -> countable decision."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edge.analysis.classify import Classifier
from edge.analysis.crops import crop_cells
from edge.analysis.detect import Detector
from edge.engines.bundle import Bundle


@dataclass(frozen=True)
class Cell:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in field pixels
    detector_score: float
    class_name: str
    class_probability: float
    probabilities: np.ndarray  # (C,) stage-2 ensemble mean, in the bundle's class order
    p_countable: float
    countable: bool


@dataclass(frozen=True)
class FieldResult:
    index: int
    source: str
    width: int
    height: int
    cells: list[Cell]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def countable_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.countable]


class FieldAnalyzer:
    """Everything the count path does to one field, on whatever backends it was given."""

    def __init__(
        self,
        bundle: Bundle,
        detector: Detector,
        classifier: Classifier,
        crop_margin: float | None = None,
        countable_threshold: float | None = None,
    ) -> None:
        spec = bundle.manifest.classifier
        self.detector = detector
        self.classifier = classifier
        self.crop_size = spec.crop_size
        self.crop_margin = spec.crop_margin if crop_margin is None else crop_margin
        self.countable_threshold = spec.countable_threshold if countable_threshold is None else countable_threshold
        self.class_names = bundle.class_names
        self._never_counted = np.array([c.role == "not_countable" for c in bundle.manifest.classes])

    def __call__(self, image: np.ndarray, index: int = 0, source: str = "") -> FieldResult:
        t0 = time.perf_counter()
        detections = self.detector(image)
        t1 = time.perf_counter()
        crops = crop_cells(image, detections.boxes, self.crop_size, self.crop_margin)
        t2 = time.perf_counter()
        p_countable, probs = self.classifier(crops)
        t3 = time.perf_counter()
        winners = probs.argmax(axis=1) if len(probs) else np.empty(0, np.int64)
        cells = [
            Cell(
                box=tuple(float(v) for v in detections.boxes[i]),  # type: ignore[arg-type]
                detector_score=float(detections.scores[i]),
                class_name=self.class_names[winners[i]],
                class_probability=float(probs[i, winners[i]]),
                probabilities=probs[i],
                p_countable=float(p_countable[i]),
                countable=bool(p_countable[i] >= self.countable_threshold and not self._never_counted[winners[i]]),
            )
            for i in range(len(winners))
        ]
        timings = {"detect": (t1 - t0) * 1e3, "crop": (t2 - t1) * 1e3, "classify": (t3 - t2) * 1e3}
        return FieldResult(index, source, image.shape[1], image.shape[0], cells, timings)
