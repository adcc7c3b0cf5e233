"""Fields of known cells at known scales: marrow cells tiled into grids of several sizes and optical
scales, counted by the appliance's own field analysis (issue 46: does a cell reach the models at
its size, whatever the camera?).

Each field is an n x n grid of matek_bm crops (the test split for reporting, validation for
choices) at their native resolution (250 px, the cell in the middle of each, neighbours at the
edges as in a dense marrow), then resized by the optical scale (2.0: the same optics with twice
the pixels per micrometre). Only the field's size or scale changes, never the cells, so a change
in the per-class detection and counted rates is what the field's geometry does to the count. A
crop's cell is detected when a box is centred within 0.2 crop sides of the crop's centre (matek_bm
centres its crops on their cell, mostly: a few large cells sit off centre); counted when that box's
cell is counted.

Reported by ``marrow-edge validate-slides --grids`` (``training.evaluation.scales``); the bundle's
working scale is chosen on validation grids (``training.bundle.scale``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.analysis.field import FieldResult
from training.data.compose import DATA, matek_splits

log = logging.getLogger(__name__)
TILE = 250  # matek_bm's crop side
CENTRE_RADIUS = 0.2  # of the crop side: a detection centred this near the crop's centre is its cell
CLASSES = ("BLA", "LYT", "MON", "EOS", "NGS", "PMO", "NIF", "ART")
WHITE = ("BLA", "LYT", "MON", "EOS", "NGS", "PMO")


@dataclass
class GridCell:
    image: np.ndarray  # a 250 px matek_bm crop, its cell in the middle
    code: str


@dataclass
class GridOutcome:
    grid: int
    optical: float
    um_per_px: float | None  # what the appliance was told (None: not told, fitted)
    detected: dict[str, float] = field(default_factory=dict)
    counted: dict[str, float] = field(default_factory=dict)
    right: dict[str, float] = field(default_factory=dict)  # counted and called the crop's own class
    cells: dict[str, int] = field(default_factory=dict)
    blast_share_error: float = 0.0  # counted blast share minus the true share among white cells, points
    tiles: int = 1
    ms_per_field: float = 0.0
    sides: list[float] = field(default_factory=list)  # box sides of the matched detections, field pixels
    all_sides: list[float] = field(default_factory=list)  # of every detection (neighbours cut by the crops too)


def load_cells(data: Path = DATA, codes: Sequence[str] = CLASSES, split: str = "test") -> list[GridCell]:
    cells = []
    for sample in matek_splits(data)[split]:
        if sample.label not in codes:
            continue
        image = cv2.cvtColor(cv2.imread(str(sample.image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if image.shape[:2] != (TILE, TILE):
            image = cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA)
        cells.append(GridCell(image, sample.label))
    return cells


def grid_field(cells: Sequence[GridCell], n: int, optical: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An n x n field of the cells (row by row), resized by ``optical``; the cells' centres in field pixels."""
    field_image = np.zeros((n * TILE, n * TILE, 3), np.uint8)
    centres, codes = [], []
    for i, cell in enumerate(cells[: n * n]):
        row, col = divmod(i, n)
        field_image[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE] = cell.image
        centres.append([(col + 0.5) * TILE, (row + 0.5) * TILE])
        codes.append(cell.code)
    if optical != 1.0:
        side = round(n * TILE * optical)
        interpolation = cv2.INTER_AREA if optical < 1 else cv2.INTER_CUBIC
        field_image = cv2.resize(field_image, (side, side), interpolation=interpolation)
    return field_image, np.array(centres, np.float32) * optical, codes


def match(centres: np.ndarray, found: np.ndarray, radius: float) -> np.ndarray:
    """For each crop centre the index of the detection whose centre is nearest, within ``radius``
    (one detection each, nearest pairs first), -1 if none. The centre, not the nucleus-derived box:
    in a dense marrow crop that rule can merge the central nucleus with a neighbour's."""
    out = np.full(len(centres), -1)
    if not len(found):
        return out
    middle = (found[:, :2] + found[:, 2:]) / 2
    distance = np.linalg.norm(centres[:, None, :] - middle[None, :, :], axis=2)
    taken: set[int] = set()
    for t, d in sorted(np.argwhere(distance <= radius).tolist(), key=lambda td: distance[td[0], td[1]]):
        if out[t] < 0 and d not in taken:
            out[t] = d
            taken.add(d)
    return out


def measure(
    analyzer: Callable[[np.ndarray, int, str], FieldResult],
    cells: Sequence[GridCell],
    grid: int,
    optical: float = 1.0,
    um_per_px: float | None = None,
    fields: int | None = None,
    seed: int = 0,
    aliases: dict[str, str] | None = None,
) -> GridOutcome:
    """Every cell once (in ``grid`` x ``grid`` fields, shuffled by ``seed``), or ``fields`` fields.
    ``aliases`` (dataset code -> bundle class) also scores each counted cell's class."""
    import time

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cells))
    per_field = grid * grid
    total = len(order) // per_field if fields is None else min(fields, len(order) // per_field)
    seen: dict[str, int] = defaultdict(int)
    detected: dict[str, int] = defaultdict(int)
    counted: dict[str, int] = defaultdict(int)
    right: dict[str, int] = defaultdict(int)
    counted_blasts = counted_white = 0
    tiles, seconds, sides, all_sides = 1, 0.0, [], []
    for f in range(total):
        chosen = [cells[i] for i in order[f * per_field : (f + 1) * per_field]]
        image, centres, codes = grid_field(chosen, grid, optical)
        t0 = time.perf_counter()
        result = analyzer(image, f, f"grid{grid}_{f}")
        seconds += time.perf_counter() - t0
        tiles = result.scale.tiles if result.scale else 1
        found = np.array([c.box for c in result.cells], np.float32).reshape(-1, 4)
        all_sides += np.maximum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1]).tolist()
        matched = match(centres, found, CENTRE_RADIUS * TILE * optical)
        for code, m in zip(codes, matched, strict=True):
            seen[code] += 1
            if m >= 0:
                detected[code] += 1
                x1, y1, x2, y2 = result.cells[m].box
                sides.append(max(x2 - x1, y2 - y1))
                if result.cells[m].countable:
                    counted[code] += 1
                    right[code] += aliases is not None and result.cells[m].class_name == aliases.get(code)
                    if code in WHITE:
                        counted_white += 1
                        counted_blasts += result.cells[m].class_name == "blast"
    true_blasts = sum(seen[c] for c in ("BLA",)) / max(sum(seen[c] for c in WHITE), 1)
    return GridOutcome(
        grid,
        optical,
        um_per_px,
        {c: detected[c] / seen[c] for c in seen},
        {c: counted[c] / seen[c] for c in seen},
        {c: right[c] / seen[c] for c in seen},
        dict(seen),
        100 * (counted_blasts / max(counted_white, 1) - true_blasts),
        tiles,
        1e3 * seconds / max(total, 1),
        sides,
        all_sides,
    )
