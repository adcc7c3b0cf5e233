"""Single-cell images brought to the geometry the appliance cuts from a field.

The public sets frame their cells differently: a 250 px marrow crop at 40x with neighbours
(matek_bm), a 360 px blood crop at 100x with the cell in a quarter of it (pbc_cells), a tight
120 px crop (zheng2018 dataset1). The count path never sees such framing: it cuts a square of
the detector's box x (1 + margin) around each cell. So every cell image is first given a box
for its central cell, then cut exactly as the count path cuts (``edge.analysis.crops``), and
evaluation scores the same crops.

The central cell's box comes from its nucleus: nuclei are the most saturated blue-violet
pixels of a Romanowsky-stained image in every set here (B - G high), the lobes of one cell
are merged by a closing, the component nearest the centre is taken and its box widened by
``CYTOPLASM`` for the cytoplasm. The same rule drew the boxes of the composed marrow fields
the detector learns from, so the detector's boxes and these agree by construction
(contact sheet: docs/marrow-boxes.jpg).
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.analysis.colour import background_colour, white_balance
from edge.analysis.crops import crop_cells

CYTOPLASM = 1.3  # box side over nucleus box side


def nucleus_mask(image: np.ndarray) -> np.ndarray:
    """uint8 0/255 mask of nucleus-like pixels of an RGB image."""
    rgb = image.astype(np.int16)
    # chromatin absorbs green: nuclei are the darkest pixels in G among the bluer-than-green ones
    score = np.where(rgb[..., 2] - rgb[..., 1] > 10, 255 - rgb[..., 1], 0).astype(np.uint8)
    score = cv2.GaussianBlur(score, (0, 0), max(1.0, min(image.shape[:2]) / 150))
    stained = score[score > 0]
    if stained.size < 16:
        return np.zeros(image.shape[:2], np.uint8)
    # two Otsu levels: stained vs not, then nucleus vs cytoplasm within the stained pixels
    first, _ = cv2.threshold(stained.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    inner = stained[stained > first]
    second = first
    if inner.size >= 16:
        second, _ = cv2.threshold(inner.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, mask = cv2.threshold(score, max(second, 100), 255, cv2.THRESH_BINARY)
    side = max(3, int(min(image.shape[:2]) * 0.06) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)


def central_cell_box(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """(x1, y1, x2, y2) of the cell nearest the centre, and whether a nucleus was found.

    Without a nucleus (an artefact, a platelet, a washed-out image) the box is the central
    half of the image, so the crop still shows what the set's annotator saw.
    """
    height, width = image.shape[:2]
    count, _, stats, centroids = cv2.connectedComponentsWithStats(nucleus_mask(image), connectivity=8)
    min_area = 0.004 * height * width
    best, best_distance = -1, np.inf
    for i in range(1, count):
        if stats[i, cv2.CC_STAT_AREA] < min_area:
            continue
        distance = np.hypot(centroids[i, 0] - width / 2, centroids[i, 1] - height / 2)
        if distance < best_distance:
            best, best_distance = i, distance
    if best < 0 or best_distance > 0.35 * min(height, width):
        side = min(height, width) / 2
        return np.array([(width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2]), False
    x, y, w, h = stats[best, :4]
    cx, cy = x + w / 2, y + h / 2
    half_w, half_h = w * CYTOPLASM / 2, h * CYTOPLASM / 2
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dtype=np.float64), True


def cell_crop(image: np.ndarray, size: int, margin: float, balance: bool = True) -> np.ndarray:
    """The central cell as the count path would cut it: (size, size, 3) uint8."""
    if balance:
        image = white_balance(image)
    box, _ = central_cell_box(image)
    # Beyond the image lies more smear, not a smeared edge: pad with the background colour
    # (repeating the edge would paint stripes that only one data set has, a shortcut).
    pad = int(max(box[2] - box[0], box[3] - box[1]) * (1 + margin) / 2) + 2
    background = background_colour(image)
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=background.tolist())
    return crop_cells(padded, (box + pad)[None].astype(np.float32), size, margin)[0]
