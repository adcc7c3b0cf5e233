"""Cells among neighbours, cut around a detector-like box: the crops a field at the working scale gives.

The crop cache cuts each cell from its own image, and beyond that image lies flat background
(``training.data.cells``). On a field the same square holds neighbours, and the detector's box is
not the nucleus-derived one: at the working scale its side is 0.86-1.25x that box, its centre off
by a few percent (training/README, marrow-bm 2.0.2). Stage 1 learned "something else in the crop"
as "cut by the border" and dropped a third of the blasts a working-scale detector found (issue 46).

Two kinds of field, each from one split's cells only:
- composed (``training.data.compose``): cells faded into a smear-coloured ground at the working
  scale (0.8-1.25x their native size), 4-8 a field, overlapping by at most 10%;
- mosaic: matek crops side by side at their native size, each with the neighbours its own image
  holds, the next crop beyond its edge (as ``training.data.grids`` builds its fields). The edge
  between two crops is an artefact of the source's framing like the cache's flat background: a
  crop should be judged by its cell, not by its framing.
Each cell's box is jittered in side and centre as the detector's boxes are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from edge.analysis.colour import white_balance
from edge.analysis.crops import crop_cells
from training.data.cells import central_cell_box
from training.data.compose import CellPatch, compose_field
from training.data.grids import TILE, GridCell, grid_field

BOX_SIDE = (0.85, 1.25)  # detector box side over the nucleus-derived box side (p10-p90 at the working scale)
BOX_SHIFT = 0.08  # centre offset, of the box side
WORKING = (0.8, 1.25)  # cell size in composed fields, of matek's native (the detector's working scale)
FIELD = (512, 384)


def jitter(boxes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boxes as a detector draws them around the same cells: scaled and shifted squares of their side."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + rng.uniform(-BOX_SHIFT, BOX_SHIFT, (len(boxes), 2)) * side[:, None]
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * rng.uniform(*BOX_SIDE, (len(boxes), 1))
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


def mosaic(cells: Sequence[GridCell], n: int) -> tuple[np.ndarray, np.ndarray]:
    """An n x n grid field of the cells (``training.data.grids``) and each central cell's box in field pixels."""
    field, _, _ = grid_field(cells, n)
    boxes = []
    for i, cell in enumerate(cells[: n * n]):
        row, col = divmod(i, n)
        box, _ = central_cell_box(white_balance(cell.image))
        boxes.append(box + np.array([col, row, col, row]) * TILE)
    return field, np.array(boxes, np.float32)


def neighbour_crops(
    patches: Sequence[CellPatch],
    tiles: Sequence[GridCell],
    fields: int,
    side: int,
    margin: float,
    rng: np.random.Generator,
) -> Iterator[tuple[np.ndarray, str, str]]:
    """(crop, dataset code, kind) for every cell of ``fields`` composed fields (from ``patches``) and as many
    mosaics (3x3 or 4x4 of ``tiles``: native 250 px matek crops with their codes), cut at ``side`` with ``margin``."""
    for _ in range(fields):
        chosen = [patches[i] for i in rng.choice(len(patches), int(rng.integers(4, 9)), replace=False)]
        field, boxes, codes = compose_field(chosen, rng, FIELD, WORKING)
        if len(boxes):
            crops = crop_cells(white_balance(field), jitter(boxes, rng), side, margin)
            yield from ((crop, code, "composed") for crop, code in zip(crops, codes, strict=True))
        n = int(rng.integers(3, 5))
        picked = [tiles[i] for i in rng.choice(len(tiles), n * n, replace=False)]
        field, boxes = mosaic(picked, n)
        crops = crop_cells(white_balance(field), jitter(boxes, rng), side, margin)
        yield from ((crop, cell.code, "mosaic") for crop, cell in zip(crops, picked, strict=True))
