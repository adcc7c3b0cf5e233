"""Issue 20, defects 2 and 7: the TensorRT backend's buffers, shape checks and CUDA graphs, run
against the stand-ins of edge.engines.tensorrt_standin (TensorRT cannot be installed here): the
'engine' is the bundle's ONNX graph run by ONNX Runtime, device memory is bounds-checked."""

from __future__ import annotations

import numpy as np
import pytest

from edge.analysis.tensorrt_plans import engine_profiles
from edge.engines.bundle import load_bundle
from edge.engines.onnxruntime import OnnxRuntimeBackend
from edge.engines.tensorrt import TensorRTBackend
from edge.engines.tensorrt_standin import install
from edge.errors import EngineError
from tests.cli_helpers import ROOT

BUNDLE = load_bundle(ROOT / "models" / "marrow-bm")
PROFILES = engine_profiles(BUNDLE)
# 640x640 is the profile's largest input but not its most anchors: the graph resizes inside
SHAPES = [(640, 640), (384, 512), (384, 640), (387, 384), (640, 640)]


@pytest.fixture
def detector(monkeypatch):
    cudart = install(monkeypatch, {b"detector": (BUNDLE.path("detector.onnx"), PROFILES["detector"])})
    return cudart, OnnxRuntimeBackend(BUNDLE.path("detector.onnx"))


@pytest.mark.parametrize("graphs", [False, True])
def test_detector_outputs_are_whole_at_every_field_shape(detector, graphs):
    cudart, reference = detector
    backend = TensorRTBackend(b"detector", use_cuda_graphs=graphs)
    rng = np.random.default_rng(0)
    for h, w in SHAPES + SHAPES:  # the second round replays the captured graphs
        x = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        ours, theirs = backend.run({"images": x}), reference.run({"images": x})
        for name in theirs:
            assert ours[name].shape == theirs[name].shape, (h, w, name)
            np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-4, err_msg=f"{h}x{w} {name}")
    if graphs:
        assert cudart.launches > 0  # graphs were replayed, and replayed right
    backend.close()
    assert not cudart.memory and not cudart.execs and not cudart.graphs  # everything freed and destroyed


def test_a_shape_outside_the_profile_is_refused(detector):
    backend = TensorRTBackend(b"detector")
    with pytest.raises(EngineError, match=r"outside the engine's profile"):
        backend.run({"images": np.zeros((1, 2100, 640, 3), np.uint8)})  # the profile ends at 2048 px (tiles)
    with pytest.raises(EngineError, match=r"outside the engine's profile"):
        backend.run({"images": np.zeros((2, 64, 64, 3), np.uint8)})
    out = backend.run({"images": np.zeros((1, 64, 64, 3), np.uint8)})  # still usable after a refusal
    assert out["boxes"].shape[1] == 4


def test_a_failed_capture_is_never_replayed(detector):
    cudart, _ = detector
    backend = TensorRTBackend(b"detector", use_cuda_graphs=True)
    x = np.random.default_rng(1).integers(0, 256, (1, 384, 512, 3), dtype=np.uint8)
    first = backend.run({"images": x})  # plain run; the capture happens on it
    assert cudart.execs  # captured
    backend.close()
    cudart.launches = 0
    backend = TensorRTBackend(b"detector", use_cuda_graphs=True)
    original = backend.context.execute_async_v3
    calls = []

    def enqueue(stream):  # the plain run succeeds, the enqueue inside the capture fails
        calls.append(stream)
        if len(calls) == 2:
            backend.context.fail_next_enqueue = True
        return original(stream)

    backend.context.execute_async_v3 = enqueue
    out = backend.run({"images": x})
    assert not cudart.capturing and not cudart.execs and not backend.use_cuda_graphs
    again = backend.run({"images": x})
    assert cudart.launches == 0  # nothing was instantiated from the failed capture, nothing replayed
    for name in first:
        np.testing.assert_array_equal(out[name], first[name])
        np.testing.assert_array_equal(again[name], first[name])
    backend.close()


def test_an_exception_inside_the_capture_ends_it(detector):
    cudart, _ = detector
    backend = TensorRTBackend(b"detector", use_cuda_graphs=True)
    x = np.zeros((1, 384, 512, 3), np.uint8)
    calls = []
    original = backend.context.execute_async_v3

    def enqueue(stream):
        calls.append(stream)
        if len(calls) == 2:
            raise RuntimeError("driver said no")
        return original(stream)

    backend.context.execute_async_v3 = enqueue
    backend.run({"images": x})
    assert not cudart.capturing  # the stream is usable: the capture was ended
    backend.run({"images": x})
    backend.close()
