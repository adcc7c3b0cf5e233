"""Scripted backends for unit tests: the InferenceBackend interface without a model file."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class FakeDetectorBackend:
    """Returns the same anchors' boxes (A, 4) and scores (A, L) for every field."""

    name = "fake"

    def __init__(self, boxes: np.ndarray, scores: np.ndarray) -> None:
        self.boxes = np.asarray(boxes, np.float32)
        self.scores = np.asarray(scores, np.float32).reshape(len(self.boxes), -1)
        self.calls: list[tuple[int, ...]] = []

    @property
    def providers(self) -> list[str]:
        return ["fake"]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(inputs["images"].shape)
        return {"boxes": self.boxes, "scores": self.scores}


class FakeClassifierBackend:
    """``fn(crops) -> (countable (N,), probs (N, C))``; records the batch sizes it saw."""

    name = "fake"

    def __init__(self, fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
        self.fn = fn
        self.batches: list[int] = []

    @property
    def providers(self) -> list[str]:
        return ["fake"]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops = inputs["images"]
        self.batches.append(len(crops))
        countable, probs = self.fn(crops)
        return {"countable": np.asarray(countable, np.float32), "probs": np.asarray(probs, np.float32)}


class FakeBlobDetectorBackend:
    """A detector that sees: every dark blob (grey level under ``dark``) of the image it is given is
    a cell, boxed in that image's pixels with score 0.9. For tests of how fields reach the detector
    (resizing, tiles): what it finds depends on the pixels handed to it, as a real graph's does."""

    name = "fake-blobs"

    def __init__(self, dark: int = 100) -> None:
        self.dark = dark
        self.calls: list[tuple[int, ...]] = []

    @property
    def providers(self) -> list[str]:
        return ["fake"]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import cv2

        images = inputs["images"]
        self.calls.append(images.shape)
        mask = (images[0].mean(axis=2) < self.dark).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        x, y, w, h = (stats[1:, i].astype(np.float32) for i in range(4))
        boxes = np.stack([x, y, x + w, y + h], axis=1).reshape(-1, 4)
        return {"boxes": boxes, "scores": np.full((count - 1, 1), 0.9, np.float32)}
