"""Build TensorRT engines from a bundle, verify them against ONNX Runtime FP32, cache them.

The marrow-edge-engines unit builds them before the pipeline (which refuses to, unless
``engine.on_engine_mismatch: rebuild``); by hand:

    python -m build_engines.tensorrt --bundle models/marrow-bm --cache /var/cache/marrow-edge/engines

TensorRT 10 builds FP16 from the FP32 graph with the FP16 builder flag, softmax, sigmoid and
exp (box decoding) kept in FP32 by layer constraints (chosen by layer type: ``fp32_layers``).
TensorRT 11 builds strongly typed networks only: the precision comes from the graph, so an FP16
variant of the ONNX file is made first (``edge.engines.fp16``) with those ops kept in FP32.

Written to TensorRT's documented Python API (10.x/11.x) and cuda-python; TensorRT could not be
installed where this was developed (its wheels fetch the libraries from NVIDIA's index), so
this path has not run on hardware yet: see the README's backend table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.analysis.crops import crop_cells
from edge.analysis.detect import fit_field
from edge.engines.bundle import Bundle, VerificationSpec, sha256_file
from edge.engines.engine_cache import EngineKey, OnMismatch, find_plan, store_plan
from edge.engines.onnxruntime import OnnxRuntimeBackend
from edge.errors import EngineError

log = logging.getLogger(__name__)

MAX_CLASSIFIER_BATCH = 64
TYPICAL_CELLS = 16  # the classifier profile's optimum: a marrow field at x1000 holds a handful to a few dozen
WORKSPACE_BYTES = 2 << 30


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability) of device 0, through cuda-python."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    err, prop = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise EngineError(f"cannot query the GPU: CUDA error {err}")
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return name.rstrip("\x00"), f"{prop.major}.{prop.minor}"


def tensorrt_version() -> str:
    import tensorrt as trt

    return str(trt.__version__)


TILE_MAX = 2048  # the detector profile's largest side for a bundle with a scale: analysis.tile_px's default


def engine_profiles(bundle: Bundle) -> dict[str, dict[str, list[list[int]]]]:
    """Optimisation profiles: the detector over the field sizes the appliance feeds, the
    classifier over batch 1..64 with the optimum at a typical field."""
    det = bundle.manifest.detector
    low = det.input_min_size or 256
    high = det.input_max_size or 2048
    if not det.graph_resizes:  # fields at the bundle's scale come in tiles up to analysis.tile_px (default 2048)
        high = max(high, TILE_MAX)
    crop = bundle.manifest.classifier.crop_size
    return {
        "detector": {"images": [[1, 32, 32, 3], [1, low, round(low * 4 / 3), 3], [1, high, high, 3]]},
        "classifier": {
            "images": [[1, crop, crop, 3], [TYPICAL_CELLS, crop, crop, 3], [MAX_CLASSIFIER_BATCH, crop, crop, 3]]
        },
    }


def engine_key(bundle: Bundle, model: str, onnx_path: Path, precision: str) -> EngineKey:
    name, capability = gpu_identity()
    version = tensorrt_version()
    return EngineKey(
        model=model,
        onnx_sha256=sha256_file(onnx_path),
        gpu_name=name,
        compute_capability=capability,
        tensorrt_version=version,
        precision=precision,  # type: ignore[arg-type]
        strongly_typed=int(version.split(".")[0]) >= 11,
        profile=engine_profiles(bundle)[model],
    )


class _Progress:
    """Logs the builder's phases: a first build on a Jetson takes minutes."""

    def __new__(cls) -> Any:
        import tensorrt as trt

        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self.last = 0.0

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                log.info(
                    "TensorRT: %s (%d steps)%s", phase_name, num_steps, f" in {parent_phase}" if parent_phase else ""
                )

            def step_complete(self, phase_name: str, step: int) -> bool:
                now = time.monotonic()
                if now - self.last > 10:  # a line every 10 s at most
                    log.info("TensorRT: %s step %d", phase_name, step + 1)
                    self.last = now
                return True  # False would cancel the build

            def phase_finish(self, phase_name: str) -> None:
                log.debug("TensorRT: %s done", phase_name)

        return Monitor()


def fp32_layers(network: Any, trt: Any) -> list[int]:
    """The layers an FP16 build keeps in FP32: softmax, sigmoid and exp (box decoding).

    Chosen by layer type, never by name: the parser names layers after ONNX nodes, and the 27
    squeeze-excitation gates of the bundles' MobileNetV3s are ``.../HardSigmoid`` activations that
    FP16 handles well (pinning them by a "Sigmoid" in the name cost conversions around each).
    A layer's own kind is read after casting it to its class, as TensorRT's Python API requires.
    """
    chosen = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type
        if kind == trt.LayerType.SOFTMAX:
            chosen.append(i)
        elif kind == trt.LayerType.ACTIVATION:
            layer.__class__ = trt.IActivationLayer
            if layer.type == trt.ActivationType.SIGMOID:  # IActivationLayer.type: the activation's kind
                chosen.append(i)
        elif kind == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer
            if layer.op == trt.UnaryOperation.EXP:
                chosen.append(i)
    return chosen


def _timing_cache(config: Any, path: Path) -> Any:
    """The saved timing cache, or an empty one when it is unreadable or from another TensorRT or GPU
    (the cache is only a speed-up: a stale one must not fail the build)."""
    data = path.read_bytes() if path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None:
                return cache
        except Exception as exc:  # TensorRT raises its own error types for a foreign cache
            log.warning("TensorRT timing cache %s not usable (%s): starting an empty one", path, exc)
    return config.create_timing_cache(b"")


def build_plan(onnx_path: Path, key: EngineKey, timing_cache: Path) -> bytes:
    """Serialise an engine for ``key`` (TensorRT 10 or 11)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if key.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if key.precision == "fp16" and not key.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        for i in fp32_layers(network, trt):
            layer = network.get_layer(i)
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in key.profile.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    config.set_timing_cache(_timing_cache(config, timing_cache), ignore_mismatch=False)
    monitor = _Progress()
    config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT could not build {onnx_path.name} (see the TensorRT log above)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def reference_inputs(bundle: Bundle, fields: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Fixed real inputs: the fitted fields, and crops of the cells ONNX Runtime finds in them."""
    det = bundle.manifest.detector
    fitted = [fit_field(f, det.input_min_size, det.input_max_size)[0][None] for f in fields]
    from edge.analysis.detect import Detector

    detector = Detector(OnnxRuntimeBackend(bundle.path(det.file)), det)
    spec = bundle.manifest.classifier
    crops = [crop_cells(f, detector(f).boxes, spec.crop_size, spec.count_margin) for f in fields]
    batch = np.concatenate([c for c in crops if len(c)]) if any(len(c) for c in crops) else None
    if batch is None:
        raise EngineError("the verification fields hold no cell the detector finds: choose other fields")
    return {"detector": fitted, "classifier": [batch[i : i + MAX_CLASSIFIER_BATCH] for i in range(0, len(batch), 64)]}


PROBABILITY_OUTPUTS = ("scores", "countable", "probs")
BOX_OUTPUTS = ("boxes",)


def compare_outputs(
    model: str,
    candidate: Callable,
    reference: Callable,
    inputs: list[np.ndarray],
    spec: VerificationSpec,
    score_floor: float = 0.0,
) -> dict[str, Any]:
    """Engine vs ONNX Runtime FP32 on the same inputs, each output by its own measure: scores and
    probabilities as probabilities (``max_probability_diff``), boxes in pixels
    (``max_box_diff_px``) over the anchors whose reference score reaches ``score_floor`` (the ones
    that may become cells; a background anchor's box never reaches the count)."""
    worst_probability = worst_box = 0.0
    agree = total = 0
    for x in inputs:
        ours, theirs = candidate({"images": x}), reference({"images": x})
        for name, value in theirs.items():
            if name not in ours or ours[name].shape != value.shape:
                got = ours[name].shape if name in ours else "nothing"
                raise EngineError(f"the {model} engine's {name} is {got}, ONNX Runtime's {value.shape}")
        for name in PROBABILITY_OUTPUTS:
            if name in theirs:
                diff = np.abs(ours[name].astype(np.float32) - theirs[name])
                worst_probability = max(worst_probability, float(diff.max(initial=0.0)))
        for name in BOX_OUTPUTS:
            if name in theirs:
                keep = theirs["scores"].max(axis=1) >= score_floor if "scores" in theirs else slice(None)
                diff = np.abs(ours[name].astype(np.float32) - theirs[name])[keep]
                worst_box = max(worst_box, float(diff.max(initial=0.0)))
        if model == "classifier":
            agree += int((ours["probs"].argmax(1) == theirs["probs"].argmax(1)).sum())
            total += len(x)
    report: dict[str, Any] = {"inputs": len(inputs), "max_probability_diff": worst_probability}
    failures = []
    if worst_probability > spec.max_probability_diff:
        failures.append(f"probability difference {worst_probability:.4f} > {spec.max_probability_diff}")
    if model == "detector":
        report["max_box_diff_px"] = worst_box
        if worst_box > spec.max_box_diff_px:
            failures.append(f"box difference {worst_box:.2f} px > {spec.max_box_diff_px} px")
    if model == "classifier":
        report["class_agreement"] = agree / total
        report["cells"] = total
        if agree / total < spec.min_class_agreement:
            failures.append(f"class agreement {agree / total:.3f} < {spec.min_class_agreement}")
    report["passed"] = not failures
    report["failures"] = failures
    return report


def _check_graph(onnx_path: Path) -> None:
    """Refuse, before a build of minutes, a graph TensorRT's parser would refuse (issue 20)."""
    try:
        from edge.engines.graph_check import check_for_tensorrt

        problems = check_for_tensorrt(onnx_path)
    except ImportError:  # onnx is in the gpu extra; without it the parser itself will say
        log.warning("onnx not installed: %s not checked before the TensorRT build", onnx_path.name)
        return
    if problems:
        raise EngineError("; ".join(problems) + ": re-export the bundle (python -m build_engines.recast)")


def ensure_engines(
    bundle: Bundle,
    cache: Path,
    precision: str,
    on_mismatch: OnMismatch,
    fields: list[np.ndarray],
    builder: Callable[[Path, EngineKey, Path], bytes] = build_plan,
    key_for: Callable[[Bundle, str, Path, str], EngineKey] = engine_key,
    runner: Callable[[bytes], Callable] | None = None,
) -> dict[str, Path]:
    """A verified plan per model for this GPU, built when missing or stale (or refused).

    A build that fails verification stores nothing and raises: a wrong engine never runs.
    """
    manifest = bundle.manifest
    plans: dict[str, Path] = {}
    inputs: dict[str, list[np.ndarray]] | None = None
    for model, spec in (("detector", manifest.detector), ("classifier", manifest.classifier)):
        onnx_path = bundle.path(spec.file)
        key = key_for(bundle, model, onnx_path, precision)
        found = find_plan(cache, key, on_mismatch)
        if found is not None:
            log.info("TensorRT engine for %s found: %s", model, found.name)
            plans[model] = found
            continue
        _check_graph(onnx_path)
        source = onnx_path
        if key.strongly_typed and precision == "fp16":
            from edge.engines.fp16 import fp16_variant

            source = fp16_variant(onnx_path, cache / f"{onnx_path.stem}-fp16-{key.onnx_sha256[:12]}.onnx")
        log.info(
            "building the TensorRT %s engine for %s (%s); first builds take minutes", precision, model, key.gpu_name
        )
        started = time.monotonic()
        plan_bytes = builder(source, key, cache / "timing.cache")
        seconds = time.monotonic() - started
        if inputs is None:
            inputs = reference_inputs(bundle, fields)
        run = (runner or _tensorrt_runner)(plan_bytes)
        reference = OnnxRuntimeBackend(onnx_path).run
        # half the bundle's detection threshold: every anchor that could become a cell, with margin
        floor = manifest.detector.score_threshold / 2
        report = compare_outputs(model, run, reference, inputs[model], manifest.verification, floor)
        log.info("TensorRT %s engine vs ONNX Runtime FP32: %s", model, report)
        if not report["passed"]:
            raise EngineError(
                f"the TensorRT {model} engine does not match ONNX Runtime FP32: {'; '.join(report['failures'])}; "
                "nothing was cached"
            )
        plans[model] = store_plan(cache, key, plan_bytes, seconds, report)
    return plans


def _tensorrt_runner(plan_bytes: bytes) -> Callable:
    from edge.engines.tensorrt import TensorRTBackend

    return TensorRTBackend(plan_bytes).run
