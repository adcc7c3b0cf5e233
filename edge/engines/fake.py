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
