"""Cut square, context-padded crops from the full-resolution field (CPU path)."""

from __future__ import annotations

import cv2
import numpy as np


def crop_cells(field: np.ndarray, boxes: np.ndarray, size: int, margin: float) -> np.ndarray:
    """(K, size, size, 3) uint8 crops, one per box.

    Each crop is the square around the box centre with side = longer box side x (1 + margin),
    so the cell keeps its aspect ratio and some surroundings, as the classifiers were trained.
    Parts outside the field repeat its edge pixels.
    """
    crops = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    height, width = field.shape[:2]
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + margin)
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        left, top = round(cx - side / 2), round(cy - side / 2)
        side_px = max(round(side), 1)
        right, bottom = left + side_px, top + side_px
        patch = field[max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
        pad = (max(-top, 0), max(bottom - height, 0), max(-left, 0), max(right - width, 0))
        if any(pad):
            patch = cv2.copyMakeBorder(patch, *pad, borderType=cv2.BORDER_REPLICATE)
        interpolation = cv2.INTER_AREA if side_px > size else cv2.INTER_LINEAR
        # the patch is a view of the decoded frame; the resize writes straight into the batch
        cv2.resize(patch, (size, size), dst=crops[i], interpolation=interpolation)
    return crops
