"""Benchmark fields with a chosen number of real cells.

The background is tiled from the bundled sample fields (their white cells painted over with
the field's own background colour); the cells are the bundled PBC crops (``samples/cells``),
pasted with a soft round edge on a jittered grid. Each field comes with its cells' boxes, so
a benchmark can have every backend classify exactly N cells per field.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from edge.capture.decode import decode_image

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FIELDS = ROOT / "samples" / "fields"
SAMPLE_CELLS = ROOT / "samples" / "cells"
CELL_PX = 220  # a PBC crop pasted at this size holds a white cell of about 120-140 px
BOX_FRACTION = 0.6  # the box around the cell, as a fraction of the pasted crop


def _read(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes(), str(path))


def _background_tiles(fields: Path) -> list[np.ndarray]:
    """Sample fields with their white cells (YOLO label 0) painted over."""
    tiles = []
    for path in sorted(fields.glob("*.jpg")):
        image = _read(path)
        height, width = image.shape[:2]
        fill = np.median(image.reshape(-1, 3), axis=0).astype(np.uint8)
        labels = fields / "labels" / f"{path.stem}.txt"
        if labels.is_file():
            for line in labels.read_text().splitlines():
                parts = line.split()
                if len(parts) == 5 and parts[0] == "0":
                    cx, cy, w, h = (float(v) for v in parts[1:])
                    x1, y1 = int((cx - w / 2) * width), int((cy - h / 2) * height)
                    x2, y2 = math.ceil((cx + w / 2) * width), math.ceil((cy + h / 2) * height)
                    image[max(y1, 0) : y2, max(x1, 0) : x2] = fill
        tiles.append(image)
    if not tiles:
        raise FileNotFoundError(f"no sample fields in {fields}")
    return tiles


def _round_mask(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) / (size / 2)
    return np.clip((0.95 - radius) / 0.15, 0.0, 1.0)[..., None]  # 1 inside, soft edge


def compose_field(
    n_cells: int,
    height: int = 1440,
    width: int = 1920,
    seed: int = 0,
    fields: Path = SAMPLE_FIELDS,
    cells: Path = SAMPLE_CELLS,
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB field, (n_cells, 4) float32 boxes) with ``n_cells`` real cells."""
    rng = np.random.default_rng(seed)
    tiles = _background_tiles(fields)
    canvas = np.empty((height, width, 3), np.uint8)
    tile_h, tile_w = tiles[0].shape[:2]
    for top in range(0, height, tile_h):
        for left in range(0, width, tile_w):
            tile = tiles[int(rng.integers(len(tiles)))]
            tile = cv2.resize(tile, (tile_w, tile_h)) if tile.shape[:2] != (tile_h, tile_w) else tile
            canvas[top : top + tile_h, left : left + tile_w] = tile[: height - top, : width - left]
    cell_files = sorted(cells.glob("*.jpg"))
    if not cell_files:
        raise FileNotFoundError(f"no sample cells in {cells}")
    cols = max(1, math.ceil(math.sqrt(n_cells * width / height)))
    rows = max(1, math.ceil(n_cells / cols))
    step_x, step_y = width / cols, height / rows
    mask = _round_mask(CELL_PX)
    slots = rng.permutation(rows * cols)[:n_cells]
    boxes = []
    for slot in slots:
        row, col = divmod(int(slot), cols)
        jitter = rng.uniform(-0.1, 0.1, size=2) * (step_x, step_y)
        cx = (col + 0.5) * step_x + jitter[0]
        cy = (row + 0.5) * step_y + jitter[1]
        x1 = int(np.clip(round(cx - CELL_PX / 2), 0, width - CELL_PX))
        y1 = int(np.clip(round(cy - CELL_PX / 2), 0, height - CELL_PX))
        cell = cv2.resize(_read(cell_files[int(rng.integers(len(cell_files)))]), (CELL_PX, CELL_PX))
        region = canvas[y1 : y1 + CELL_PX, x1 : x1 + CELL_PX].astype(np.float32)
        canvas[y1 : y1 + CELL_PX, x1 : x1 + CELL_PX] = (mask * cell + (1 - mask) * region).astype(np.uint8)
        half = BOX_FRACTION * CELL_PX / 2
        centre_x, centre_y = x1 + CELL_PX / 2, y1 + CELL_PX / 2
        boxes.append([centre_x - half, centre_y - half, centre_x + half, centre_y + half])
    return canvas, np.asarray(boxes, np.float32).reshape(-1, 4)
