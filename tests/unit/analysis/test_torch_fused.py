"""The fused PyTorch field path on the CPU (FP32): the same cells as ONNX Runtime, on real fields."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs the train extra (torch)")

from benchmarks.fields import compose_field  # noqa: E402
from edge.analysis.crops import crop_cells  # noqa: E402
from edge.analysis.detect import fitted_size  # noqa: E402
from edge.analysis.field_models import (  # noqa: E402
    build_field_model,
    torch_model,
)
from edge.analysis.torch_fused import TorchFusedFieldModel, bucket, load_torch_models  # noqa: E402
from edge.analysis.verify import compare_models  # noqa: E402
from edge.capture.replay import verification_fields  # noqa: E402
from edge.config import DEFAULT_SAMPLES, AppConfig  # noqa: E402
from edge.errors import EngineError  # noqa: E402

CPU = {"type": "torch", "device": "cpu", "precision": "fp32"}


@pytest.fixture(scope="module")
def fused(bundle):
    config = AppConfig(engine=CPU)
    return torch_model(bundle, config.analysis, config.engine)


def test_fused_cpu_matches_onnxruntime_on_the_sample_fields(bundle, fused, ort_reference):
    report = compare_models(fused, ort_reference, verification_fields(DEFAULT_SAMPLES), bundle.manifest.verification)
    assert report.reference_boxes >= 8 and report.matched_boxes == report.reference_boxes
    assert report.class_agreement == 1.0
    # resize/crop arithmetic differs, the cells do not: well inside the bundle's own tolerance (0.05); the
    # EfficientNet member of marrow-bm 2.0 is the most sensitive to it (0.032 here; 1.3.0's members 0.02)
    tolerance = bundle.manifest.verification.max_probability_diff
    assert report.passed and report.max_probability_diff < 0.8 * tolerance, report


def test_fused_cpu_on_thirty_real_cells(bundle, fused, ort_reference):
    image, boxes = compose_field(30, 720, 960, seed=3)
    ours, theirs = fused(image, boxes), ort_reference(image, boxes)
    assert ours.probs.shape == theirs.probs.shape == (30, len(bundle.class_names))
    agreement = (ours.probs.argmax(1) == theirs.probs.argmax(1)).mean()
    assert agreement >= 0.9, agreement
    assert np.abs(ours.p_countable - theirs.p_countable).max() < 0.1


def test_device_crops_match_host_crops_at_the_border(bundle):
    """RoIAlign on a replicate-padded frame against OpenCV crops, a box cut by the field edge included."""
    detector, classifier = load_torch_models(bundle)
    spec = bundle.manifest.classifier
    model = TorchFusedFieldModel(detector, classifier, bundle.manifest.detector, spec, "cpu", "fp32", False)
    rng = np.random.default_rng(0)
    image = (rng.random((300, 400, 3)) * 40 + np.linspace(0, 200, 400)[None, :, None]).astype(np.uint8)
    boxes = np.array([[100, 80, 220, 200], [0, 0, 90, 70], [330, 240, 400, 300]], np.float32)
    host = crop_cells(image, boxes, spec.crop_size, spec.crop_margin).astype(np.float32)
    with torch.no_grad():
        frame = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        normalised = model._crop(frame, torch.from_numpy(boxes))
    device = (normalised * model._std + model._mean).permute(0, 2, 3, 1).numpy()
    assert device.shape == host.shape
    assert np.abs(device - host).mean() < 3.0  # grey levels out of 255
    assert np.abs(device - host).max() < 40.0


def test_empty_field_gives_no_cells(bundle, fused):
    out = fused(np.full((480, 640, 3), 235, np.uint8))
    assert out.boxes.shape == (0, 4) and out.probs.shape == (0, len(bundle.class_names))


def test_fp16_on_the_cpu_is_refused(bundle):
    with pytest.raises(EngineError, match="fp16 needs a CUDA device"):
        config = AppConfig(engine={**CPU, "precision": "fp16"})
        torch_model(bundle, config.analysis, config.engine)


def test_cuda_without_a_gpu_is_a_clear_error(bundle):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EngineError, match=r"backend torch cannot run on cuda here\. Available: onnxruntime"):
        build_field_model(bundle, AppConfig(engine={"type": "torch", "device": "cuda"}))


def test_tensorrt_unavailable_names_what_is(bundle):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(EngineError, match=r"backend tensorrt is not available here: not installed: tensorrt.*torch"):
        build_field_model(bundle, AppConfig(engine={"type": "tensorrt"}))


def test_appliance_on_the_torch_backend_verifies_before_use(bundle, caplog):
    caplog.set_level("INFO")
    model, report = build_field_model(bundle, AppConfig(engine=CPU), verification_fields(DEFAULT_SAMPLES))
    assert report is not None and report.passed and report.cells_compared >= 8
    assert model.name == "torch-cpu-fp32"
    assert "verified torch-cpu-fp32 against onnxruntime" in caplog.text


def test_bundle_without_torch_weights_is_refused(bundle, tmp_path):
    plain = bundle.manifest.model_copy(update={"torch_weights": None})
    bare = type(bundle)(root=tmp_path, manifest=plain, digest=bundle.digest)
    with pytest.raises(EngineError, match="carries no PyTorch weights"):
        load_torch_models(bare)


def test_helpers():
    assert [bucket(n) for n in (1, 2, 3, 17, 64, 65)] == [1, 2, 4, 32, 64, 65]
    assert fitted_size(1440, 1920, 384, 640) == (384, 512)
    assert fitted_size(366, 369, 384, 640) == (384, 387)
    assert fitted_size(100, 200, None, None) == (100, 200)


def test_capturable_box_decoding_equals_torchvision(bundle):
    from torchvision.ops import boxes as box_ops

    from edge.analysis.torch_fused import decode_boxes

    coder = load_torch_models(bundle)[0].detector.box_coder
    generator = torch.Generator().manual_seed(0)
    anchors = torch.rand(500, 2, generator=generator) * 300
    anchors = torch.cat([anchors, anchors + 20 + torch.rand(500, 2, generator=generator) * 100], dim=1)
    rel = torch.randn(500, 4, generator=generator) * 2  # large enough to hit the exp clip and the borders
    expected = box_ops.clip_boxes_to_image(coder.decode_single(rel, anchors), (320, 400))
    ours = decode_boxes(rel, anchors, coder.weights, coder.bbox_xform_clip, (320, 400))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)


def test_compile_wraps_the_networks_and_says_so(bundle, monkeypatch):
    # issue 18: torch.compile as a GPU lever. Compiling for real takes minutes on this CPU (about 4;
    # benchmarks/throughput.py --torch measures it), so here torch.compile is recorded, not run.
    compiled = []

    def record(module, mode=None, dynamic=None):
        compiled.append((type(module).__name__, mode, dynamic))
        return module

    monkeypatch.setattr(torch, "compile", record)
    detector, classifier = load_torch_models(bundle)
    m = bundle.manifest
    model = TorchFusedFieldModel(detector, classifier, m.detector, m.classifier, device="cpu", precision="fp32",
                                 compile=True)  # fmt: skip
    assert len(compiled) == 1 + len(m.classifier.stage2) + 1  # stage 1, each member, the detector's backbone
    assert all(mode == "default" and dynamic is False for _, mode, dynamic in compiled)  # on the CPU
    assert model.name.endswith("-compiled") and model.providers[0].endswith(":compiled")
    config = AppConfig(engine={"type": "torch", "device": "cpu", "precision": "fp32", "compile": True})
    assert config.engine.compile is True


def test_a_bundle_keeps_its_own_members_when_its_profile_changes_later(tmp_path):
    """The manifest names the stage-2 members the bundle was made with: the torch loader builds
    those, not whatever the profile in the code says today (a one-member bundle of a profile that
    has two since must still load, with all its weights and none missing)."""
    from edge.engines.graphs import PROFILES, build_classifier, build_detector, load_graphs

    profile = PROFILES["lite"]
    torch.save(build_detector(profile, num_classes=2).state_dict(), tmp_path / "detector.pt")
    torch.save(build_classifier(profile.stage1, 2).state_dict(), tmp_path / "stage1.pt")
    torch.save(build_classifier("mobilenet_v3_small", 4).state_dict(), tmp_path / "stage2_0.pt")
    _, classifier, trained = load_graphs("lite", 4, ("WBC",), tmp_path, require_all=True,
                                         stage2=("mobilenet_v3_small",))  # fmt: skip
    assert trained and len(classifier.members) == 1
    with pytest.raises(Exception, match=r"stage2_[01]\.pt|size mismatch"):
        load_graphs("lite", 4, ("WBC",), tmp_path, require_all=True)  # the profile's three members: not these


def test_a_bundle_keeps_its_own_stage1_when_its_profile_changes_later(tmp_path):
    """Likewise for stage 1: a bundle whose manifest names a stage 1 other than the profile's today
    (marrow-bm 2.0.0: mobilenet_v3_small, before efflite moved to EfficientNet-Lite0) loads with it."""
    from edge.engines.graphs import PROFILES, build_classifier, build_detector, load_graphs

    profile = PROFILES["lite"]
    torch.save(build_detector(profile, num_classes=2).state_dict(), tmp_path / "detector.pt")
    torch.save(build_classifier("shufflenet_v2_x1_0", 2).state_dict(), tmp_path / "stage1.pt")
    for i, arch in enumerate(profile.stage2):
        torch.save(build_classifier(arch, 4).state_dict(), tmp_path / f"stage2_{i}.pt")
    _, classifier, trained = load_graphs("lite", 4, ("WBC",), tmp_path, require_all=True, stage1="shufflenet_v2_x1_0")
    assert trained and type(classifier.stage1).__name__ == "ShuffleNetV2"
    with pytest.raises(Exception, match=r"stage1\.pt|size mismatch|Missing key|Unexpected key"):
        load_graphs("lite", 4, ("WBC",), tmp_path, require_all=True)  # the profile's mobilenet: not this file


def test_a_field_at_the_bundles_scale_is_tiled_alike_on_both_paths(bundle, fused, ort_reference):
    """A large field cut into tiles at the bundle's scale: the fused path finds what ONNX Runtime finds."""
    from edge.analysis.scale import tile_overlap

    image, _ = compose_field(24, 1500, 1700, seed=5)
    overlap = tile_overlap(bundle.manifest.scale)
    try:
        for model in (fused, ort_reference):
            model.set_scale(0.9, overlap, 640)  # 1530x1350 at the detector: 4 x 3 tiles of 640 px
        ours, theirs = fused(image), ort_reference(image)
    finally:
        for model in (fused, ort_reference):
            model.set_scale(None)
    assert len(theirs.boxes) >= 15 and len(ours.boxes) == len(theirs.boxes)
    middles = lambda boxes: (boxes[:, :2] + boxes[:, 2:]) / 2  # noqa: E731
    distance = np.linalg.norm(middles(ours.boxes)[:, None] - middles(theirs.boxes)[None], axis=2).min(axis=1)
    assert distance.max() < 3.0
