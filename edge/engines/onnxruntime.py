"""ONNX Runtime backend (CPU EP by default; CUDA and TensorRT EPs selectable).

ONNX Runtime falls back to the CPU silently when the CUDA libraries do not match; this
backend compares what was asked with ``session.get_providers()`` and says so, or refuses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from edge.errors import EngineError

log = logging.getLogger(__name__)

ProviderName = Literal["cpu", "cuda", "tensorrt"]
_ORT_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


_SHORT = {v: k for k, v in _ORT_NAMES.items()}
_ORT_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(int64)": "int64"}


def provider_options(precision: str, cache: Path) -> dict[str, dict[str, str | int | bool]]:
    """Options of the GPU providers (documented names of ONNX Runtime's TensorRT and CUDA EPs)."""
    return {
        "tensorrt": {
            "trt_fp16_enable": precision == "fp16",
            "trt_engine_cache_enable": True,  # ORT keys its cache by graph, GPU and TensorRT version
            "trt_engine_cache_path": str(cache / "onnxruntime-trt"),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache / "onnxruntime-trt"),
        },
        "cuda": {"cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": True},
    }


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        model: Path,
        providers: list[ProviderName] | None = None,
        threads: int = 0,
        require_providers: bool = False,
        provider_options: dict[str, dict[str, str | int | bool]] | None = None,
        session_config: dict[str, str] | None = None,
    ) -> None:
        import onnxruntime as ort  # lazy: keeps `marrow-edge --help` fast

        wanted = [_ORT_NAMES[p] for p in (providers or ["cpu"])]
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")  # ORT needs a last resort for unsupported nodes
        available = ort.get_available_providers()
        missing = [p for p in wanted if p not in available]
        if missing and require_providers:
            raise EngineError(
                f"execution providers {missing} are not in this onnxruntime build "
                f"(available: {available}); install onnxruntime-gpu or choose providers: [cpu]"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        try:
            chosen = [p for p in wanted if p in available]
            options_for = provider_options or {}
            self._session = ort.InferenceSession(
                str(model),
                sess_options=options,
                providers=chosen,
                provider_options=[options_for.get(_SHORT[p], {}) for p in chosen],
            )
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise EngineError(f"ONNX Runtime cannot load {model}: {exc}") from None
        self._providers = list(self._session.get_providers())
        first_wanted = wanted[0]
        if self._providers[0] != first_wanted:
            message = (
                f"{model.name}: asked for {first_wanted} but {self._providers[0]} runs "
                "(ONNX Runtime fell back; check the CUDA/TensorRT libraries)"
            )
            if require_providers:
                raise EngineError(message)
            log.warning(message)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.signature = {
            t.name: (_ORT_DTYPES.get(t.type, t.type), list(t.shape))
            for t in [*self._session.get_inputs(), *self._session.get_outputs()]
        }

    @property
    def providers(self) -> list[str]:
        return self._providers

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self.output_names, inputs)
        return dict(zip(self.output_names, outputs, strict=True))
