"""A field brought to the scale its detector learned, in overlapping tiles where it is large.

Fitting every field to the detector's input size (short side 384 px) makes a cell's size depend on
the camera's pixel count, not on the cell: a 2448x2048 sensor's cells shrink until the detector
loses them (issue 46). With the camera's scale (um per pixel, ``source.um_per_px``) and the scale
the bundle's detector learned at (``bundle.json`` ``scale``), the field is resized by their ratio
instead, so a cell reaches the detector at the size it was trained on, and a field larger than one
detector input is cut into tiles that overlap by more than the largest trained cell: every cell
lies whole in at least one tile, and it belongs to the tile whose core holds its centre, so it is
counted once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.engines.bundle import DetectorSpec, ScaleSpec


@dataclass(frozen=True)
class Tile:
    """One detector input cut from the resized field; ``core`` (x1, y1, x2, y2) is the part whose
    cells belong to this tile (cells whose centre falls elsewhere belong to a neighbour)."""

    x0: int
    y0: int
    x1: int
    y1: int
    core: tuple[float, float, float, float]


@dataclass(frozen=True)
class FieldPlan:
    """How one field reaches the detector: resized by ``factor`` to ``height`` x ``width``, in tiles."""

    factor: float  # detector pixels per field pixel
    height: int
    width: int
    tiles: tuple[Tile, ...]

    @property
    def tiled(self) -> bool:
        return len(self.tiles) > 1


def fitted_size(height: int, width: int, min_size: int | None, max_size: int | None) -> tuple[int, int]:
    """(h, w) a field is fitted to: short side ``min_size``, long side at most ``max_size``."""
    if min_size is None:
        return height, width
    scale = min(min_size / min(height, width), (max_size or 10**9) / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def scale_factor(field_um_per_px: float | None, scale: ScaleSpec | None) -> float | None:
    """Detector pixels per field pixel, or None when either scale is unknown (the field is fitted)."""
    if field_um_per_px is None or scale is None:
        return None
    return field_um_per_px / scale.um_per_px


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile origins along one axis: the first at 0, the last at the far end."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(v) for v in np.linspace(0, length - tile, count)]


def _cores(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """Each tile's core along one axis: from the middle of the overlap before it to the middle after."""
    ends = [min(s + tile, length) for s in starts]
    bounds = [-math.inf] + [(ends[i] + starts[i + 1]) / 2 for i in range(len(starts) - 1)] + [math.inf]
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def plan_field(
    height: int, width: int, spec: DetectorSpec, factor: float | None, overlap: int = 0, tile: int | None = None
) -> FieldPlan:
    """The detector input(s) for a ``height`` x ``width`` field.

    ``factor`` None: the bundle's fit (short side ``input_min_size``, long side at most
    ``input_max_size``), one input, as before scales were known. Otherwise the field is resized
    by ``factor`` and, when a side exceeds one detector input (``tile``, default ``input_max_size``),
    cut into square tiles of that side overlapping by ``overlap`` pixels (more than the largest cell).
    """
    if factor is None:
        h, w = fitted_size(height, width, spec.input_min_size, spec.input_max_size)
        return FieldPlan(w / width, h, w, (Tile(0, 0, w, h, (-math.inf, -math.inf, math.inf, math.inf)),))
    h, w = max(32, round(height * factor)), max(32, round(width * factor))
    tile = tile or spec.input_max_size or spec.input_min_size or max(h, w)
    overlap = min(overlap, tile // 2)
    xs, ys = _starts(w, tile, overlap), _starts(h, tile, overlap)
    tiles = []
    for y_start, (cy0, cy1) in zip(ys, _cores(ys, tile, h), strict=True):
        for x_start, (cx0, cx1) in zip(xs, _cores(xs, tile, w), strict=True):
            tiles.append(Tile(x_start, y_start, min(x_start + tile, w), min(y_start + tile, h), (cx0, cy0, cx1, cy1)))
    return FieldPlan(w / width, h, w, tuple(tiles))


def tile_overlap(scale: ScaleSpec | None) -> int:
    """Pixels (at the detector's scale) by which tiles overlap: a quarter more than the largest
    cell the detector learned, so a cell whose centre is in a tile's core lies whole in that tile."""
    if scale is None:
        return 0
    return math.ceil(1.25 * scale.cell_side_px_max)


def in_core(boxes: np.ndarray, core: tuple[float, float, float, float]) -> np.ndarray:
    """Which boxes (x1, y1, x2, y2, in the resized field) have their centre in ``core``; arithmetic and
    comparisons only, so a torch tensor of boxes gets a tensor mask on its own device."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx >= core[0]) & (cx < core[2]) & (cy >= core[1]) & (cy < core[3])
