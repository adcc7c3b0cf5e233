"""Where a site's corrected cells come from: the review store's signed slides, or a folder per label.

Both give crops at the bundle's classifier size (``SiteCells``); the command line and the review page read them
here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from edge.adaptation.adapt import SiteCells
from edge.errors import EdgeError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def _decode(data: bytes, size: int, name: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise EdgeError(f"{name}: not an image")
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def cells_from_folder(root: Path, size: int):
    if not root.is_dir():
        raise EdgeError(f"{root}: not a folder")
    crops, labels, skipped = [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                crops.append(_decode(path.read_bytes(), size, str(path)))
                labels.append(folder.name)
            except EdgeError:
                skipped.append(path.name)
    if skipped:
        log.warning("%d file(s) are not images, left out: %s", len(skipped), ", ".join(skipped[:5]))
    if not crops:
        raise EdgeError(f"{root}: no crops (one sub-folder per label, images inside)")
    return SiteCells(np.stack(crops), labels, [])


def cells_from_store(path: Path, size: int, corrected_only: bool):
    from edge.review.records import NOT_COUNTABLE
    from edge.review.store import SlideStore

    if not path.exists():
        raise EdgeError(f"{path}: no such store")
    store = SlideStore(path)
    crops, labels, slides = [], [], []
    try:
        for slide in store.slides(limit=100_000):
            if slide.signed_version == 0:
                continue  # nobody has looked at it yet
            for cell in store.cells(slide.slide_id):
                label = cell.label if corrected_only else cell.tray
                if label is None or label == NOT_COUNTABLE or not cell.has_crop:
                    continue
                data = store.image(slide.slide_id, cell.cell_id, "crop")
                if data:
                    crops.append(_decode(data, size, f"{slide.slide_id} cell {cell.cell_id}"))
                    labels.append(label)
                    slides.append(slide.slide_id)
    finally:
        store.close()
    if not crops:
        what = "relabelled cells" if corrected_only else "cells of signed slides"
        raise EdgeError(f"{path}: no {what} to adapt from: review and sign slides first")
    return SiteCells(np.stack(crops), labels, slides)
