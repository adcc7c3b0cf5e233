"""Are this slide's cells the size the detector works at? The scale's part of the domain guard.

The bundle records the median box side of the cells its detector finds at its working scale
(``bundle.json`` ``scale.cell_side_px_median``, every box as calibrate-scale sees them). Each field
says by how much it was resized for the detector (``FieldScale.factor``), so every box found has a
side at the detector's scale; the slide's median over the bundle's is the size ratio. A ratio far
from 1 means the scale in use is wrong for these fields: an objective changed (50x instead of 100x
halves every cell), another camera, or no scale set on a camera whose fields shrink cells on the
fit. Slides differ in their mix of cells (small lymphocytes, large blasts), so only a ratio beyond
``LIMIT`` either way counts as changed: half or double a cell is far outside it. With no scale set
the fields are fitted, and the bundle's training fields themselves spanned a range of sizes
(``range_um_per_px``): only a size outside that range, by ``LIMIT`` again, counts as changed (a
large sensor's field shrunk to the detector's input); inside it the size is said, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge.engines.bundle import ScaleSpec

LIMIT = 1.35  # ratio beyond which (or under 1/LIMIT) the cells are not the size the detector works at
MIN_CELLS = 20
SizeState = Literal["ok", "changed", "too_few_cells", "not_checked"]


@dataclass(frozen=True)
class SizeCheck:
    state: SizeState
    ratio: float | None  # slide median cell side at the detector over the bundle's
    cells: int  # boxes measured (too_few_cells: boxes still needed)
    um_per_px: float | None  # the camera scale in use (None: fields fitted, no scale set)

    @property
    def changed(self) -> bool:
        return self.state == "changed"

    def ratio_words(self) -> str:
        return "" if self.ratio is None else f"cells {self.ratio:.2f}x the size the detector works at"

    def reason(self) -> str:
        """The size finding in the technician's words, with what to do when it is changed (the guard's reason)."""
        if not self.changed:
            return self.ratio_words()
        if self.um_per_px is None:
            return f"{self.ratio_words()} and no scale is set for this camera: marrow-edge calibrate-scale measures it"
        return (
            f"{self.ratio_words()} (set scale {self.um_per_px:.4f} um/px): objective or camera changed? "
            "marrow-edge calibrate-scale measures it again"
        )

    def scale_sentence(self) -> str:
        if self.um_per_px is None:
            return "scale: not set (fields fitted to the detector's input; marrow-edge calibrate-scale measures it)"
        return f"scale: {self.um_per_px:.4f} um/px"

    def summary(self) -> str:
        """The scale in use and, once judged, the cells' size against it: the display's and reports' line."""
        return self.scale_sentence() + (f"; {self.ratio_words()}" if self.ratio is not None else "")


class SizeWatch:
    """The sizes of one slide's cells at the detector's scale; ``check()`` at any time."""

    def __init__(self, scale: ScaleSpec | None, um_per_px: float | None = None) -> None:
        self.scale = scale
        self.um_per_px = um_per_px
        self._sides: list[float] = []

    def add(self, boxes: list[tuple[float, float, float, float]], factor: float) -> None:
        self._sides += [max(x2 - x1, y2 - y1) * factor for x1, y1, x2, y2 in boxes]

    def check(self) -> SizeCheck:
        if self.scale is None:
            return SizeCheck("not_checked", None, len(self._sides), self.um_per_px)
        if len(self._sides) < MIN_CELLS:
            return SizeCheck("too_few_cells", None, MIN_CELLS - len(self._sides), self.um_per_px)
        ratio = float(np.median(self._sides)) / self.scale.cell_side_px_median
        low, high = self.limits()
        state: SizeState = "changed" if not low <= ratio <= high else "ok"
        return SizeCheck(state, round(ratio, 3), len(self._sides), self.um_per_px)

    def limits(self) -> tuple[float, float]:
        """The size ratios judged the same scale: around 1 with a scale set, the training range without."""
        if self.um_per_px is not None or self.scale is None:
            return 1 / LIMIT, LIMIT
        finest, coarsest = self.scale.range_um_per_px
        return self.scale.um_per_px / coarsest / LIMIT, self.scale.um_per_px / finest * LIMIT
