"""PyTorch backend: the reference the exported graphs are checked against, and the benchmark
baseline (FP32 eager, as the seed paper's code would run). Needs the train extra."""

from __future__ import annotations

from typing import Any

import numpy as np


class TorchBackend:
    name = "torch-eager"

    def __init__(self, module: Any, output_names: list[str], device: str = "cpu") -> None:
        import torch  # lazy: torch is not a runtime dependency

        self._torch = torch
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self.output_names = output_names

    @property
    def providers(self) -> list[str]:
        return [f"torch:{self.device}"]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            outputs = self.module(torch.from_numpy(inputs["images"]).to(self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return {n: o.cpu().numpy() for n, o in zip(self.output_names, outputs, strict=True)}
