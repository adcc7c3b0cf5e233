"""GPU paths, run by benchmarks/gpu_check.sh on a CUDA machine; skipped (with the reason) elsewhere.

TensorRT and ONNX Runtime's CUDA provider are tested where they are installed; this project's
GPU machines have neither (see the README's backend table), so those tests skip there too.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the GPU paths need torch (the train extra)")

from benchmarks.fields import compose_field  # noqa: E402
from edge.analysis.field_models import (  # noqa: E402
    build_field_model,
    onnxruntime_model,
    torch_model,
)
from edge.analysis.verify import compare_models  # noqa: E402
from edge.capture.replay import verification_fields  # noqa: E402
from edge.config import DEFAULT_SAMPLES, AppConfig  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]

CUDA = {"type": "torch", "device": "cuda", "precision": "fp16", "cuda_graphs": True}


@pytest.fixture(scope="module")
def fp16_graphs(bundle):
    config = AppConfig(engine=CUDA)
    return torch_model(bundle, config.analysis, config.engine)


def test_fp16_graphs_match_onnxruntime_fp32_on_real_fields(bundle, fp16_graphs, ort_reference):
    report = compare_models(
        fp16_graphs, ort_reference, verification_fields(DEFAULT_SAMPLES), bundle.manifest.verification
    )
    print("verification", report.as_dict())
    assert report.passed, report.failures
    assert report.class_agreement == 1.0


def test_fp16_on_sixty_real_cells_agrees_with_onnxruntime(fp16_graphs, ort_reference):
    image, boxes = compose_field(60, 1440, 1920, seed=7)
    ours, theirs = fp16_graphs(image, boxes), ort_reference(image, boxes)
    agreement = float((ours.probs.argmax(1) == theirs.probs.argmax(1)).mean())
    diff = float(np.abs(ours.probs - theirs.probs).max())
    print(f"60 cells: class agreement {agreement:.3f}, max probability difference {diff:.4f}")
    assert agreement >= 0.9 and diff < 0.2


def test_cuda_graphs_replay_what_eager_computes(bundle, fp16_graphs):
    config = AppConfig(engine={**CUDA, "cuda_graphs": False})
    eager = torch_model(bundle, config.analysis, config.engine)
    for n in (1, 3, 30, 70):  # max_batch 32: buckets 1, 4, 32 and 32 + 32 + 8; padding must not leak
        image, boxes = compose_field(n, 720, 960, seed=n)
        a, b = fp16_graphs(image, boxes), eager(image, boxes)
        assert a.probs.shape == (n, len(bundle.class_names))
        np.testing.assert_allclose(a.probs, b.probs, atol=2e-3)
        np.testing.assert_allclose(a.p_countable, b.p_countable, atol=2e-3)
    assert fp16_graphs.graph_failures == []
    assert set(fp16_graphs._classifier_graphs) == {1, 4, 8, 32}


def test_detections_match_between_graph_replays(fp16_graphs):
    image = verification_fields(DEFAULT_SAMPLES)[0]
    first, second = fp16_graphs(image), fp16_graphs(image)
    np.testing.assert_array_equal(first.boxes, second.boxes)
    assert len(first.boxes) >= 1


def test_appliance_on_cuda_verifies_and_reports_the_gpu(bundle):
    model, report = build_field_model(bundle, AppConfig(engine=CUDA), verification_fields(DEFAULT_SAMPLES))
    assert report is not None and report.passed
    assert torch.cuda.get_device_name(0) in model.providers[0]


def test_only_boxes_and_probabilities_come_down(bundle, fp16_graphs):
    """The crops stay on the device: the host receives (K, 4) boxes and (K, C) probabilities only."""
    image, boxes = compose_field(30, 1440, 1920, seed=1)
    out = fp16_graphs(image, boxes)
    assert out.boxes.shape == (30, 4) and out.p_countable.shape == (30,)
    assert out.probs.shape == (30, len(bundle.class_names))
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in (out.boxes, out.probs))


def test_onnxruntime_cuda_provider(bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed (too large to carry to this project's GPU machines)")
    config = AppConfig(engine={"providers": ["cuda"], "require_providers": True})
    model = onnxruntime_model(bundle, config.analysis, config.engine)
    assert model.providers[0] == "CUDAExecutionProvider"


def test_tensorrt_engine_builds_and_verifies(bundle, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installable here (NVIDIA's index is unreachable)")
    config = AppConfig(engine={"type": "tensorrt", "engine_cache": tmp_path, "on_engine_mismatch": "rebuild"})
    model, report = build_field_model(bundle, config, verification_fields(config.engine.verify_fields))
    assert report is not None and report.passed and model.name == "tensorrt"
