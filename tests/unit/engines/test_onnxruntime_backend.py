import numpy as np
import onnxruntime
import pytest

from edge.engines.onnxruntime import OnnxRuntimeBackend
from edge.errors import EngineError

CUDA_PRESENT = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def test_cpu_runs_and_says_so(bundle_dir):
    from edge.engines.bundle import load_bundle

    size = load_bundle(bundle_dir).manifest.classifier.crop_size
    backend = OnnxRuntimeBackend(bundle_dir / "classifier.onnx", ["cpu"], threads=1)
    assert backend.providers == ["CPUExecutionProvider"]
    out = backend.run({"images": np.zeros((2, size, size, 3), np.uint8)})
    assert set(out) == {"countable", "probs"} and out["probs"].shape[0] == 2


@pytest.mark.skipif(CUDA_PRESENT, reason="this onnxruntime has CUDA: no fallback to observe")
def test_fallback_from_cuda_is_reported_or_refused(bundle_dir, caplog):
    backend = OnnxRuntimeBackend(bundle_dir / "classifier.onnx", ["cuda"])
    assert backend.providers[0] == "CPUExecutionProvider"  # what really runs, not what was asked
    with pytest.raises(EngineError, match="CUDAExecutionProvider"):
        OnnxRuntimeBackend(bundle_dir / "classifier.onnx", ["cuda"], require_providers=True)


def test_unloadable_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="ONNX Runtime cannot load"):
        OnnxRuntimeBackend(bad)
