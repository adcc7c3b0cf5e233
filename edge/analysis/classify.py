"""Classifier stage: crops -> P(countable) from stage 1 and the stage-2 ensemble's class probabilities."""

from __future__ import annotations

import numpy as np

from edge.engines.backend import InferenceBackend


class Classifier:
    """Runs the fused classifier graph in batches of at most ``max_batch`` crops."""

    def __init__(self, backend: InferenceBackend, num_classes: int, max_batch: int = 32):
        self.backend = backend
        self.num_classes = num_classes
        self.max_batch = max_batch

    def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(crops) == 0:
            return np.empty(0, np.float32), np.empty((0, self.num_classes), np.float32)
        countable, probs = [], []
        for start in range(0, len(crops), self.max_batch):
            out = self.backend.run({"images": np.ascontiguousarray(crops[start : start + self.max_batch])})
            countable.append(out["countable"])
            probs.append(out["probs"])
        return np.concatenate(countable), np.concatenate(probs)
