"""The hardware test list of issue 20: what only a GPU with TensorRT can answer. Run by
benchmarks/gpu_check.sh; every test skips, with the reason, where TensorRT does not import
(this project's build machines and its lent GPU machines: TensorRT's wheels fetch their
libraries from NVIDIA's index, which is unreachable there).

1. RetinaNet's in-graph resize arithmetic builds (FP16 and FP32).
2. FP32 pinning (by layer type) builds: no pinned layer produces a shape tensor.
3. Several per-shape CUDA graphs on one context, replayed A -> B -> A, equal plain runs.
4. A stale timing cache (another TensorRT or GPU) does not fail the build.
5. TF32 FP32 builds stay within the bundle's tolerances.
6. ONNX Runtime's TensorRT provider cache is keyed by the TensorRT version.
7. Memory of one captured graph per batch bucket fits an 8 GB Jetson (TensorRT and torch_fused).
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.analysis.tensorrt_plans import build_plan, engine_key, ensure_engines, reference_inputs
from edge.capture.replay import verification_fields
from edge.config import DEFAULT_BUNDLE, DEFAULT_SAMPLES
from edge.engines.bundle import load_bundle

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installable here (NVIDIA's index is unreachable)")
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE)


@pytest.fixture(scope="module")
def fields():
    return verification_fields(DEFAULT_SAMPLES)


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_1_detector_resize_arithmetic_builds(bundle, tmp_path, precision):
    path = bundle.path(bundle.manifest.detector.file)
    assert build_plan(path, engine_key(bundle, "detector", path, precision), tmp_path / "timing.cache")


def test_2_fp32_pinning_builds_and_verifies(bundle, tmp_path, fields):
    plans = ensure_engines(bundle, tmp_path, "fp16", "rebuild", fields)
    assert set(plans) == {"detector", "classifier"}


def test_3_graphs_per_shape_replay_a_b_a(bundle, tmp_path, fields):
    from edge.engines.tensorrt import TensorRTBackend

    plans = ensure_engines(bundle, tmp_path, "fp16", "rebuild", fields)
    graphs, plain = TensorRTBackend(plans["detector"], True), TensorRTBackend(plans["detector"], False)
    inputs = reference_inputs(bundle, fields)["detector"][:2]
    a, b = inputs[0], inputs[-1]
    for x in (a, b, a, b, a):
        ours, theirs = graphs.run({"images": x}), plain.run({"images": x})
        for name in theirs:
            np.testing.assert_array_equal(ours[name], theirs[name])


def test_4_a_stale_timing_cache_does_not_fail_the_build(bundle, tmp_path):
    path = bundle.path(bundle.manifest.classifier.file)
    (tmp_path / "timing.cache").write_bytes(b"\x00" * 4096)  # not a cache of this TensorRT
    assert build_plan(path, engine_key(bundle, "classifier", path, "fp16"), tmp_path / "timing.cache")


def test_5_tf32_fp32_builds_verify(bundle, tmp_path, fields):
    assert ensure_engines(bundle, tmp_path, "fp32", "rebuild", fields)


def test_6_onnxruntime_tensorrt_cache_is_keyed_by_version(bundle, tmp_path):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with the TensorRT provider is not installed")
    from edge.engines.onnxruntime import OnnxRuntimeBackend, provider_options

    backend = OnnxRuntimeBackend(bundle.path("classifier.onnx"), providers=["tensorrt"],
                                 provider_options=provider_options("fp16", tmp_path))  # fmt: skip
    size = bundle.manifest.classifier.crop_size
    backend.run({"images": np.zeros((4, size, size, 3), np.uint8)})
    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    print("ONNX Runtime TensorRT cache files:", names)
    major_minor = ".".join(trt.__version__.split(".")[:2])
    assert any(major_minor in n or trt.__version__ in n for n in names), "cache not keyed by TensorRT version"


def test_7_captured_graph_memory_per_batch_bucket(bundle, tmp_path, fields):
    torch = pytest.importorskip("torch")
    from edge.engines.tensorrt import TensorRTBackend

    plans = ensure_engines(bundle, tmp_path, "fp16", "rebuild", fields)
    backend = TensorRTBackend(plans["classifier"], True)
    size = bundle.manifest.classifier.crop_size
    free_before, _ = torch.cuda.mem_get_info()
    for batch in (1, 2, 4, 8, 16, 32, 64):
        backend.run({"images": np.zeros((batch, size, size, 3), np.uint8)})
        backend.run({"images": np.zeros((batch, size, size, 3), np.uint8)})
    used = (free_before - torch.cuda.mem_get_info()[0]) / 2**20
    print(f"captured graphs for 7 batch buckets: {used:.0f} MiB of device memory")
    assert used < 0.25 * 8 * 1024  # a quarter of an 8 GB Jetson at most
