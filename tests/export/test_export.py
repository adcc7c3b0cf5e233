"""Export a lite bundle from torchvision models and check it the way the appliance will use it."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs the train extra (torch)")

from build_engines import export as export_mod  # noqa: E402
from build_engines.export import ExportRequest, build_models, export_bundle  # noqa: E402
from edge.engines.bundle import load_bundle  # noqa: E402
from edge.engines.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from edge.errors import BundleError  # noqa: E402

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """State dicts as training would save them (random here, but not the export's own seed)."""
    folder = tmp_path_factory.mktemp("weights")
    request = ExportRequest(out_dir=folder, seed=123, detector_labels=("wbc", "rbc", "platelet"))
    detector, classifier, _ = build_models(request)
    torch.save(detector.detector.state_dict(), folder / "detector.pt")
    torch.save(classifier.stage1.state_dict(), folder / "stage1.pt")
    for i, member in enumerate(classifier.members):
        torch.save(member.state_dict(), folder / f"stage2_{i}.pt")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, weights, samples):
    out = tmp_path_factory.mktemp("bundles") / "lite"
    request = ExportRequest(
        out_dir=out,
        name="lite-test",
        weights_dir=weights,
        detector_labels=("wbc", "rbc", "platelet"),
        cell_labels=("wbc",),
        parity_images=sorted(samples.glob("*.jpg"))[:2],
    )
    return export_bundle(request), weights


def test_bundle_loads_with_parity_and_provenance(exported):
    out, weights = exported
    bundle = load_bundle(out)
    manifest = bundle.manifest
    assert manifest.untrained is False and manifest.provenance["weights"] == str(weights)
    assert manifest.detector.labels == ["wbc", "rbc", "platelet"] and manifest.detector.cell_labels == ["wbc"]
    assert {p.output for p in manifest.parity} == {"scores", "boxes (px)", "countable, probs"}
    for parity in manifest.parity:
        assert 0 <= parity.max_abs_diff <= parity.tolerance
    assert manifest.classifier.stage2 == ["shufflenet_v2_x1_0", "mobilenet_v3_small", "mnasnet0_5"]


def test_fused_classifier_has_a_dynamic_batch_and_valid_probabilities(exported):
    out, _ = exported
    backend = OnnxRuntimeBackend(out / "classifier.onnx")
    rng = np.random.default_rng(1)
    for batch in (1, 5):
        result = backend.run({"images": rng.integers(0, 256, (batch, 128, 128, 3), dtype=np.uint8)})
        assert result["countable"].shape == (batch,)
        assert result["probs"].shape == (batch, 20)
        np.testing.assert_allclose(result["probs"].sum(axis=1), 1.0, atol=1e-5)
        assert ((result["countable"] >= 0) & (result["countable"] <= 1)).all()


def test_detector_takes_any_field_size(exported):
    out, _ = exported
    backend = OnnxRuntimeBackend(out / "detector.onnx")
    for height, width in ((300, 400), (512, 512)):
        result = backend.run({"images": np.zeros((1, height, width, 3), np.uint8)})
        boxes = result["boxes"]
        assert result["scores"].shape == (len(boxes), 3)
        assert boxes[:, [0, 2]].max() <= width + 1e-3 and boxes[:, [1, 3]].max() <= height + 1e-3


def test_loaded_weights_are_what_is_exported(exported, weights):
    out, _ = exported
    request = ExportRequest(out_dir=out, weights_dir=weights, detector_labels=("wbc", "rbc", "platelet"))
    _, classifier, trained = build_models(request)
    assert trained
    crops = np.random.default_rng(2).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = classifier(torch.from_numpy(crops))[1].numpy()
    got = OnnxRuntimeBackend(out / "classifier.onnx").run({"images": crops})["probs"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_weights_of_another_shape_are_refused_clearly(tmp_path, weights):
    with pytest.raises(BundleError, match=r"detector\.pt does not fit the retinanet/mobilenet_v3_small-fpn64"):
        build_models(ExportRequest(out_dir=tmp_path, weights_dir=weights))  # one label, not three


def test_failed_parity_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "CLASSIFIER_TOLERANCE", 0.0)
    out = tmp_path / "never"
    with pytest.raises(BundleError, match="classifier parity failed"):
        export_bundle(ExportRequest(out_dir=out))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind


def test_exported_graphs_cast_their_uint8_input_first(exported):
    # issue 20: TensorRT's parser takes uint8 only as a network input or output
    from edge.engines.graph_check import check_for_tensorrt

    bundle_dir, _ = exported
    assert check_for_tensorrt(bundle_dir / "detector.onnx") == []
    assert check_for_tensorrt(bundle_dir / "classifier.onnx") == []
