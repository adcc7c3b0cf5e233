"""Choose, build and verify the field model the config asks for.

Each engine type registers its builder in ``ENGINES`` under the name its settings carry
(``engine.type`` in the config, a discriminated union in ``edge.config``):

onnxruntime: the host path (default, CPU or ORT's CUDA/TensorRT providers).
torch: the fused field path on PyTorch (CUDA FP16 with CUDA graphs, or the CPU in FP32).
tensorrt: engines built from the bundle's ONNX files, cached per GPU and TensorRT version.
Every engine other than ONNX Runtime FP32 is compared with it on real fields before use.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge.analysis.classify import Classifier
from edge.analysis.detect import Detector
from edge.analysis.field import FieldModel, HostFieldModel
from edge.analysis.verify import VerificationReport, verify_model
from edge.config import AnalysisConfig, AppConfig, OnnxRuntimeEngine, TensorRTEngine, TorchEngine
from edge.engines.bundle import Bundle, ModelSpec
from edge.engines.onnxruntime import OnnxRuntimeBackend, provider_options
from edge.errors import BundleError, EngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendAvailability:
    name: str
    available: bool
    devices: tuple[str, ...]
    why_not: str = ""


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[BackendAvailability]:
    """What this machine can run, without initialising CUDA more than a device count."""
    result = [BackendAvailability("onnxruntime", True, ("cpu",))]
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" in providers:
        result[0] = BackendAvailability("onnxruntime", True, ("cpu", "cuda"))
    if _has("torch") and _has("torchvision"):
        import torch

        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
        result.append(BackendAvailability("torch", True, devices))
    else:
        result.append(BackendAvailability("torch", False, (), "torch/torchvision not installed (the train extra)"))
    if _has("tensorrt") and _has("cuda"):
        result.append(BackendAvailability("tensorrt", True, ("cuda",)))
    else:
        missing = [m for m, name in (("tensorrt", "tensorrt"), ("cuda", "cuda-python")) if not _has(m)]
        result.append(BackendAvailability("tensorrt", False, (), f"not installed: {', '.join(missing)}"))
    return result


def require_backend(name: str, device: str) -> None:
    """A clear error naming what is available when ``name`` on ``device`` is not."""
    if name == "onnxruntime":
        return  # always installed (its execution providers are checked when the session starts);
        # probing the others would import torch, 0.5 GB and a second, into a runtime that never uses it
    backends = available_backends()
    listing = "; ".join(
        f"{b.name} ({', '.join(b.devices)})" if b.available else f"{b.name} (unavailable: {b.why_not})"
        for b in backends
    )
    chosen = next(b for b in backends if b.name == name)
    if not chosen.available:
        raise EngineError(f"backend {name} is not available here: {chosen.why_not}. Available: {listing}")
    if name != "onnxruntime" and device not in chosen.devices:
        raise EngineError(f"backend {name} cannot run on {device} here. Available: {listing}")


def check_signature(signature: dict[str, tuple[str, list]], spec: ModelSpec, what: str, file: str) -> None:
    """The graph must have the inputs and outputs its manifest entry names: a swapped file or a
    class list that does not fit the model fails here, at load, not at the first field."""
    for tensor in [*spec.inputs, *spec.outputs]:
        found = signature.get(tensor.name)
        if found is None:
            raise BundleError(
                f"{file} has no tensor {tensor.name!r} ({what} expected; it has {', '.join(signature)}): "
                "the bundle's model files are swapped or not its own"
            )
        dtype, shape = found
        if dtype != tensor.dtype or len(shape) != len(tensor.shape):
            raise BundleError(
                f"{file}: {tensor.name} is {dtype}{shape}, the manifest says {tensor.dtype}{tensor.shape}"
            )
        for have, want in zip(shape, tensor.shape, strict=True):
            if isinstance(want, int) and isinstance(have, int) and have != want:
                raise BundleError(
                    f"{file}: {tensor.name} has shape {shape}, the manifest says {tensor.shape}"
                    + (" (the class list does not match the model)" if tensor.name == "probs" else "")
                )


def onnxruntime_model(
    bundle: Bundle, analysis: AnalysisConfig, engine: OnnxRuntimeEngine, fields: list[np.ndarray] | None = None
) -> HostFieldModel:
    manifest = bundle.manifest
    options = provider_options(engine.precision, engine.engine_cache)
    probs = next((t for t in manifest.classifier.outputs if t.name == "probs"), None)
    if probs is not None and probs.shape[-1] != len(manifest.classes):
        raise BundleError(
            f"bundle {manifest.name}: {len(manifest.classes)} classes listed but the classifier gives "
            f"{probs.shape[-1]} probabilities: the class list does not match the model"
        )
    files = {"detector": manifest.detector.file, "classifier": manifest.classifier.file}
    if engine.int8:
        if manifest.int8 is None:
            raise BundleError(
                f"bundle {manifest.name} has no INT8 graphs (engine.int8): make them with "
                f"python -m build_engines.int8 --bundle {bundle.root}, or set engine.int8: false"
            )
        files = {"detector": manifest.int8.detector, "classifier": manifest.int8.classifier}
    backends = []
    for spec, what in ((manifest.detector, "detector"), (manifest.classifier, "classifier")):
        backend = OnnxRuntimeBackend(
            bundle.path(files[what]),
            engine.providers,
            engine.threads,
            engine.require_providers,
            options,
            engine.session_config,
        )
        check_signature(backend.signature, spec, what, files[what])
        if engine.int8:
            backend.name = "onnxruntime-int8"  # the provenance of every result says which graphs ran
        backends.append(backend)
    detector = Detector(backends[0], manifest.detector, analysis.score_threshold)
    classifier = Classifier(backends[1], len(manifest.classes), analysis.max_batch)
    return HostFieldModel(detector, classifier, manifest.classifier.crop_size, crop_margin_for(bundle, analysis))


def reference_model(bundle: Bundle, analysis: AnalysisConfig) -> HostFieldModel:
    """ONNX Runtime FP32 on the CPU: what every other engine is compared with."""
    return onnxruntime_model(bundle, analysis, OnnxRuntimeEngine(providers=["cpu"]))


def crop_margin_for(bundle: Bundle, analysis: AnalysisConfig) -> float:
    """The context cut around each detector box: the config's, else the bundle's for the count path."""
    margin = analysis.crop_margin
    return bundle.manifest.classifier.count_margin if margin is None else margin


def torch_model(
    bundle: Bundle, analysis: AnalysisConfig, engine: TorchEngine, fields: list[np.ndarray] | None = None
) -> FieldModel:
    from edge.analysis.torch_fused import TorchFusedFieldModel, load_torch_models

    detector, classifier = load_torch_models(bundle, engine.torch_weights)
    return TorchFusedFieldModel(
        detector,
        classifier,
        bundle.manifest.detector,
        bundle.manifest.classifier,
        device=engine.device,
        precision=engine.precision,
        cuda_graphs=engine.cuda_graphs,
        max_batch=max(analysis.max_batch, 1),
        score_threshold=analysis.score_threshold,
        crop_margin=crop_margin_for(bundle, analysis),
        compile=engine.compile,
    )


def tensorrt_model(
    bundle: Bundle, analysis: AnalysisConfig, engine: TensorRTEngine, fields: list[np.ndarray] | None = None
) -> HostFieldModel:
    from edge.analysis.tensorrt_plans import ensure_engines
    from edge.engines.tensorrt import TensorRTBackend

    if not fields:
        raise EngineError("TensorRT engines are verified on real fields when built: none were given")
    plans = ensure_engines(bundle, engine.engine_cache, engine.precision, engine.on_engine_mismatch, fields)
    manifest = bundle.manifest
    detector = Detector(TensorRTBackend(plans["detector"]), manifest.detector, analysis.score_threshold)
    classifier = Classifier(TensorRTBackend(plans["classifier"]), len(manifest.classes), min(analysis.max_batch, 64))
    return HostFieldModel(detector, classifier, manifest.classifier.crop_size, crop_margin_for(bundle, analysis))


# engine type -> builder(bundle, analysis settings, engine settings, verification fields)
EngineBuilder = Callable[..., FieldModel]
ENGINES: dict[str, EngineBuilder] = {
    "onnxruntime": onnxruntime_model,
    "torch": torch_model,
    "tensorrt": tensorrt_model,
}


def engine_device(engine: OnnxRuntimeEngine | TorchEngine | TensorRTEngine) -> str:
    return getattr(engine, "device", "cuda" if engine.type == "tensorrt" else "cpu")


def needs_verification(config: AppConfig) -> bool:
    """Whether the engine the config asks for is checked on real fields before use (all but ONNX
    Runtime itself; TensorRT always, as its plans are verified when built)."""
    engine = config.engine
    if isinstance(engine, OnnxRuntimeEngine):
        return engine.int8 and engine.verify
    return engine.type == "tensorrt" or engine.verify


def build_field_model(
    bundle: Bundle, config: AppConfig, fields: list[np.ndarray] | None = None
) -> tuple[FieldModel, VerificationReport | None]:
    """``fields``: the real fields to verify on, where ``needs_verification`` says so."""
    engine = config.engine
    require_backend(engine.type, engine_device(engine))
    if needs_verification(config) and not fields:
        raise EngineError(f"the {engine.type} engine is verified on real fields before use: none were given")
    model = ENGINES[engine.type](bundle, config.analysis, engine, fields)
    if isinstance(engine, OnnxRuntimeEngine) and not engine.int8:  # the reference itself
        return model, None
    if not engine.verify:
        log.warning("engine.verify is off: %s runs without a comparison with ONNX Runtime FP32", model.name)
        return model, None
    reference = reference_model(bundle, config.analysis)
    return model, verify_model(model, reference, fields or [], bundle.manifest.verification)
