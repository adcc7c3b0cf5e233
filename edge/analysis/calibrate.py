"""A camera's scale measured from its first fields, without a stage micrometer (issue 46).

The bundle records the scale its detector works at and the box sides of the cells it finds there
(``bundle.json`` ``scale``). On a new camera the detector is run over a ladder of factors (detector
pixels per field pixel); at the right factor the cells it finds have the bundle's median box side.
Where the detector sees cells at all, their size in the field's own pixels barely depends on the
factor, so each rung implies a factor, ``bundle median / field median``; the rung whose implied
factor is nearest its own (the fixed point) is refined twice, and the cells found there give the
scale, with a bootstrap interval over the cells. Fewer than ``min_cells`` cells: refused, with why.

The estimate assumes the slide's white cells are of the bundle's mix (a blood film of small
lymphocytes reads somewhat coarser than a blast-rich marrow): calibrate on ordinary marrow fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.analysis.detect import Detector
from edge.analysis.scale import tile_overlap
from edge.engines.bundle import ScaleSpec
from edge.errors import ConfigError

LADDER = tuple(2 ** (k / 2) for k in range(-4, 5))  # 0.25x .. 4x, half-octave steps
MIN_CELLS = 20
MAX_PIXELS = 4_000_000  # a rung that would blow a field up beyond this is skipped (16 tiles; cells far too big)
LADDER_FIELDS = 4  # the ladder looks at the first fields; the refinement at all of them


class CalibrationError(ConfigError):
    """The fields cannot tell the scale (too few cells at every factor)."""


@dataclass(frozen=True)
class Rung:
    factor: float  # detector pixels per field pixel
    cells: int
    mean_score: float
    median_side_px: float  # box side in the field's own pixels
    implied_factor: float  # where the bundle's median cell would be


@dataclass(frozen=True)
class Calibration:
    um_per_px: float
    low: float  # 95% interval (bootstrap over the cells)
    high: float
    factor: float  # detector pixels per field pixel at this scale
    cells: int
    fields: int
    rungs: list[Rung] = field(default_factory=list)

    def sentence(self) -> str:
        spread = 100 * max(self.high / self.um_per_px - 1, 1 - self.low / self.um_per_px)
        return (
            f"{self.um_per_px:.4f} um/px (95% interval {self.low:.4f}-{self.high:.4f}, +-{spread:.0f}%) from "
            f"{self.cells} cells in {self.fields} field(s)"
        )


def _sides(detector: Detector, fields: Sequence[np.ndarray], factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Box sides (field pixels) and scores of every cell found at ``factor``."""
    detector.factor = factor
    sides, scores = [], []
    for image in fields:
        found = detector(image)
        sides.append(np.maximum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1]))
        scores.append(found.scores)
    return np.concatenate(sides), np.concatenate(scores)


def _rung(detector: Detector, fields: Sequence[np.ndarray], factor: float, target: float) -> tuple[Rung, np.ndarray]:
    sides, scores = _sides(detector, fields, factor)
    median = float(np.median(sides)) if len(sides) else math.nan
    implied = target / median if len(sides) else math.nan
    mean = float(scores.mean()) if len(scores) else 0.0
    return Rung(round(factor, 4), len(sides), round(mean, 3), round(median, 1), round(implied, 4)), sides


def calibrate(
    detector: Detector,
    scale: ScaleSpec,
    fields: Sequence[np.ndarray],
    min_cells: int = MIN_CELLS,
    ladder: Sequence[float] = LADDER,
    seed: int = 0,
) -> Calibration:
    """The camera's um per pixel from ``fields`` (RGB, as the count path takes them)."""
    if not fields:
        raise CalibrationError("no fields to calibrate on")
    saved = detector.factor, detector.overlap
    detector.overlap = tile_overlap(scale)
    try:
        target = scale.cell_side_px_median
        area = max(image.shape[0] * image.shape[1] for image in fields)
        steps = [f for f in ladder if f * f * area <= MAX_PIXELS] or [math.sqrt(MAX_PIXELS / area)]
        rungs = [_rung(detector, fields[:LADDER_FIELDS], f, target)[0] for f in steps]
        usable = [r for r in rungs if r.cells >= min(min_cells, 3 * len(fields[:LADDER_FIELDS]))]
        if not usable:
            most = max(rungs, key=lambda r: r.cells)
            raise CalibrationError(
                f"the scale cannot be told from these {len(fields)} field(s): at most {most.cells} cells found at any "
                f"scale (at least {min_cells} needed). Give more fields with white cells in them, or a stage "
                "micrometer's value (--um-per-px)"
            )
        factor = min(usable, key=lambda r: abs(math.log(r.implied_factor / r.factor))).implied_factor
        for _ in range(2):  # refine at the implied factor: the detector's boxes follow the size they are shown at
            rung, sides = _rung(detector, fields, factor, target)
            rungs.append(rung)
            if rung.cells < min_cells:
                raise CalibrationError(
                    f"only {rung.cells} cells found at the estimated scale ({factor:.3f}x), at least {min_cells} "
                    "needed: give more fields with white cells in them, or a stage micrometer's value (--um-per-px)"
                )
            factor = rung.implied_factor
    finally:
        detector.factor, detector.overlap = saved
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(sides, size=(1000, len(sides))), axis=1)
    # a larger median cell means finer pixels: um/px = bundle um/px x target / median
    estimates = scale.um_per_px * target / medians
    low, high = (float(v) for v in np.percentile(estimates, [2.5, 97.5]))
    return Calibration(round(scale.um_per_px * factor, 5), round(low, 5), round(high, 5), factor, len(sides),
                       len(fields), rungs)  # fmt: skip
