"""The inference backend interface: one per runtime (ONNX Runtime, TensorRT, PyTorch)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class InferenceBackend(Protocol):
    """Runs one model. Inputs and outputs are numpy arrays keyed by the graph's tensor names."""

    name: str

    @property
    def providers(self) -> list[str]:
        """What really executes the graph (after any silent fallback), most preferred first."""
        ...

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
