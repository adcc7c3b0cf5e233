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


def test_session_config_entries_reach_the_session(bundle_dir):
    from edge.engines.bundle import load_bundle

    size = load_bundle(bundle_dir).manifest.classifier.crop_size
    crops = {"images": np.random.default_rng(0).integers(0, 255, (3, size, size, 3), dtype=np.uint8)}
    plain = OnnxRuntimeBackend(bundle_dir / "classifier.onnx", threads=1)
    tuned = OnnxRuntimeBackend(
        bundle_dir / "classifier.onnx", threads=1, session_config={"session.dynamic_block_base": "4"}
    )
    options = tuned._session.get_session_options()
    assert options.get_session_config_entry("session.dynamic_block_base") == "4"
    np.testing.assert_allclose(tuned.run(crops)["probs"], plain.run(crops)["probs"], rtol=1e-5, atol=1e-6)
