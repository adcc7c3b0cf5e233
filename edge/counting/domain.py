"""The domain-shift guard: does this slide look like what the bundle was trained on?

A classifier trained on one lab's camera and stain can name every cell of another lab's slide
with confidence and be wrong (issue 12: 7% right on zheng2018 dataset1). The guard watches two
per-slide statistics, each calibrated on the bundle's validation cells and fields grouped into
pseudo-slides (``training.bundle.guard``) and stored in the bundle:

- colour distance: Mahalanobis distance of the slide's mean stain features (optical density of
  each counted cell's box, ``edge.analysis.colour.cell_colour_features``) from the training
  cells' mean, with the training cells' covariance. Each cell is first taken relative to the
  training mean of the class it was called (``class_means``), so a slide rich in one class (a
  leukaemic marrow full of blasts) is not mistaken for a shift, while a different stain or camera
  moves every cell away from its class alike: the distance grows with the shift, not the count.
- mean confidence: the mean top probability of the counted cells. Unfamiliar cells lower it.

Either beyond its threshold (after ``min_cells`` counted cells) -> ``shifted``: the counts are
not reliable and every rule is held at indeterminate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge.engines.bundle import DomainGuardSpec

DomainState = Literal["ok", "shifted", "too_few_cells", "not_checked"]


@dataclass(frozen=True)
class DomainCheck:
    state: DomainState
    cells: int
    colour_distance: float | None
    mean_confidence: float | None
    reasons: tuple[str, ...] = ()

    @property
    def shifted(self) -> bool:
        return self.state == "shifted"

    def sentence(self) -> str:
        if self.state == "shifted":
            return "Slide unlike the bundle's training data (" + "; ".join(self.reasons) + "): counts not reliable"
        if self.state == "too_few_cells":
            return f"domain check after {self.cells} more cells" if self.cells else "domain check pending"
        if self.state == "not_checked":
            return "this bundle carries no domain-shift calibration"
        return "slide within the bundle's training range"


class DomainGuard:
    """Accumulates the counted cells of one slide; ``check()`` at any time."""

    def __init__(self, spec: DomainGuardSpec | None) -> None:
        self.spec = spec
        self._mean = np.asarray(spec.mean, np.float64) if spec else None
        self._inv_cov = np.asarray(spec.inv_cov, np.float64) if spec else None
        self._class_means = np.asarray(spec.class_means, np.float64) if spec and spec.class_means else None
        self._sum = np.zeros(len(spec.mean) if spec else 0, np.float64)
        self._confidence = 0.0
        self._colour_cells = 0
        self.cells = 0

    def add(
        self, colour: tuple[float, ...] | np.ndarray | None, top_probability: float, class_index: int | None = None
    ) -> None:
        self.cells += 1
        self._confidence += top_probability
        if colour is not None and self.spec is not None and len(colour) == len(self._sum):
            value = np.asarray(colour, np.float64)
            if self._class_means is not None and class_index is not None and class_index < len(self._class_means):
                value = value - self._class_means[class_index]
            self._sum += value
            self._colour_cells += 1

    def check(self) -> DomainCheck:
        if self.spec is None:
            return DomainCheck("not_checked", self.cells, None, None)
        confidence = self._confidence / self.cells if self.cells else None
        distance = None
        if self._colour_cells:
            delta = self._sum / self._colour_cells - self._mean
            distance = float(np.sqrt(max(delta @ self._inv_cov @ delta, 0.0)))
        if self.cells < self.spec.min_cells:
            remaining = self.spec.min_cells - self.cells
            return DomainCheck("too_few_cells", remaining, distance, confidence)
        reasons = []
        if distance is not None and distance > self.spec.max_colour_distance:
            reasons.append(f"stain/camera colour distance {distance:.2f} > {self.spec.max_colour_distance:.2f}")
        if confidence is not None and confidence < self.spec.min_mean_confidence:
            reasons.append(f"mean confidence {confidence:.2f} < {self.spec.min_mean_confidence:.2f}")
        return DomainCheck("shifted" if reasons else "ok", self.cells, distance, confidence, tuple(reasons))
