"""Engine settings, one model per ``engine.type``; each type's builder is registered under the same
name in ``edge.analysis.field_models.ENGINES``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from edge.config.base import DEFAULT_SAMPLES, Strict


class _VerifiedEngine(Strict):
    verify: bool = Field(
        True,
        description="Compare the whole field model with ONNX Runtime FP32 on verify_fields before use "
        "(tolerances from the bundle); a failure stops the start.",
    )
    verify_fields: Path = Field(DEFAULT_SAMPLES, description="Real fields the engine is checked on before use.")


class OnnxRuntimeEngine(_VerifiedEngine):
    """The default: ONNX Runtime on the bundle's graphs (CPU, or its CUDA/TensorRT providers).

    ``verify`` and ``verify_fields`` apply to the INT8 graphs only: FP32 is the reference itself."""

    type: Literal["onnxruntime"] = "onnxruntime"
    providers: list[Literal["cpu", "cuda", "tensorrt"]] = Field(
        default_factory=lambda: ["cpu"],
        description="ONNX Runtime execution providers in order of preference.",
    )
    require_providers: bool = Field(
        False, description="Refuse to start when a requested provider is not the one that really runs."
    )
    threads: int = Field(0, ge=0, description="Intra-op threads for ONNX Runtime; 0 lets it choose.")
    session_config: dict[str, str] = Field(
        default_factory=dict,
        description="ONNX Runtime session config entries (SessionOptions.add_session_config_entry), e.g. "
        "{'session.dynamic_block_base': '4'}: finer work blocks for the thread pool (benchmarks/throughput.py).",
    )
    precision: Literal["fp16", "fp32"] = Field("fp16", description="Precision of the TensorRT provider.")
    engine_cache: Path = Field(
        Path("/var/cache/marrow-edge/engines"), description="Where the TensorRT provider keeps its engines."
    )
    int8: bool = Field(
        False,
        description="Run the bundle's INT8 graphs (CPU; made by build_engines.int8), compared with FP32 on "
        "verify_fields before use.",
    )


class TorchEngine(_VerifiedEngine):
    """The fused field path on PyTorch (needs torch; CUDA FP16 with CUDA graphs for speed)."""

    type: Literal["torch"] = "torch"
    device: Literal["cuda", "cpu"] = "cuda"
    precision: Literal["fp16", "fp32"] = Field("fp16", description="fp16 needs a GPU.")
    cuda_graphs: bool = Field(True, description="Replay the networks as CUDA graphs.")
    compile: bool = Field(
        False,
        description="torch.compile (inductor, max-autotune without its own CUDA graphs: ours capture the compiled "
        "kernels) of the classifier's networks and the detector's backbone; minutes of compiling at start.",
    )
    torch_weights: Path | None = Field(
        None, description="Folder of PyTorch state dicts; None takes the bundle's torch/ folder."
    )


class TensorRTEngine(_VerifiedEngine):
    """Engines built from the bundle's graphs (needs TensorRT and cuda-python), verified against ONNX
    Runtime FP32 on verify_fields when built, cached per GPU and TensorRT version."""

    type: Literal["tensorrt"] = "tensorrt"
    precision: Literal["fp16", "fp32"] = "fp16"
    engine_cache: Path = Field(Path("/var/cache/marrow-edge/engines"), description="Where built engines are kept.")
    on_engine_mismatch: Literal["rebuild", "refuse"] = Field(
        "refuse",
        description="No engine built for this GPU, TensorRT, bundle and profile: refuse to start (the appliance: "
        "the marrow-edge-engines unit builds them before the pipeline, with progress, outside its start "
        "timeout), or rebuild here (a workstation trying TensorRT out; minutes on a Jetson).",
    )


# The engine is chosen by its ``type`` (a discriminated union: each type has only its own settings);
# the builders are registered under the same names in ``edge.analysis.field_models.ENGINES``.
EngineConfig = Annotated[OnnxRuntimeEngine | TorchEngine | TensorRTEngine, Field(discriminator="type")]
ENGINE_TYPES = tuple(m.model_fields["type"].default for m in (OnnxRuntimeEngine, TorchEngine, TensorRTEngine))
