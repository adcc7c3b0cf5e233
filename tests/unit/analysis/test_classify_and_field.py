import numpy as np
import pytest

from edge.analysis.classify import Classifier
from edge.analysis.detect import Detector
from edge.analysis.field import FieldAnalyzer, HostFieldModel
from edge.engines.bundle import load_bundle
from edge.engines.fake import FakeClassifierBackend, FakeDetectorBackend


def test_classifier_batches_and_keeps_order():
    def fn(crops):
        first = crops[:, 0, 0, 0].astype(np.float32)
        return first / 255.0, np.stack([first, 255 - first], axis=1) / 255.0

    backend = FakeClassifierBackend(fn)
    crops = np.zeros((7, 8, 8, 3), np.uint8)
    crops[:, 0, 0, 0] = np.arange(7) * 30
    countable, probs = Classifier(backend, 2, max_batch=3)(crops)
    assert backend.batches == [3, 3, 1]
    assert countable.tolist() == pytest.approx((np.arange(7) * 30 / 255).tolist())
    assert probs.shape == (7, 2)
    empty_countable, empty_probs = Classifier(backend, 2)(np.zeros((0, 8, 8, 3), np.uint8))
    assert empty_countable.shape == (0,) and empty_probs.shape == (0, 2)


@pytest.fixture
def bundle(bundle_dir):
    return load_bundle(bundle_dir, verify=False)


def test_field_analyzer_countable_decision(bundle):
    names = bundle.class_names
    boxes = np.array([[10, 10, 50, 50], [100, 100, 140, 140], [200, 10, 240, 50]], np.float32)
    spec = bundle.manifest.detector.model_copy(update={"input_min_size": None})  # boxes stay in these pixels
    detector = Detector(FakeDetectorBackend(boxes, [[0.9], [0.8], [0.7]]), spec, 0.5)
    first, second = 0, 1

    def fn(crops):
        probs = np.zeros((len(crops), len(names)), np.float32)
        probs[:, first] = 0.7
        probs[:, second] = 0.3
        probs[1] = np.roll(probs[1], second - first)  # the second cell is of the second class
        return np.array([0.9, 0.95, 0.2])[: len(crops)], probs

    model = HostFieldModel(detector, Classifier(FakeClassifierBackend(fn), len(names)), 32, 0.1)
    analyzer = FieldAnalyzer(bundle, model, 0.5)
    result = analyzer(np.zeros((300, 300, 3), np.uint8), index=4, source="f.jpg")
    assert (result.index, result.source, result.width, result.height) == (4, "f.jpg", 300, 300)
    assert [c.class_name for c in result.cells] == [names[0], names[1], names[0]]
    assert [c.countable for c in result.cells] == [True, True, False]  # stage 1 rejects the third
    assert result.cells[0].class_probability == pytest.approx(0.7)
    assert result.cells[1].box == (100.0, 100.0, 140.0, 140.0)
    assert set(result.timings_ms) == {"detect", "crop", "classify"}


def test_stain_features_are_taken_for_the_guard_or_when_asked(bundle, samples):
    # The guard's calibration needs each cell's stain features before the bundle has a guard.
    from edge.analysis.field_models import reference_model
    from edge.capture.decode import decode_image
    from edge.config import AppConfig

    ort_reference = reference_model(bundle, AppConfig().analysis)
    path = sorted(samples.glob("*.jpg"))[0]
    image = decode_image(path.read_bytes(), path.name)
    assert bundle.manifest.domain_guard is not None
    default = FieldAnalyzer(bundle, ort_reference)(image)
    assert default.cells and all(c.colour is not None and len(c.colour) == 6 for c in default.cells)
    off = FieldAnalyzer(bundle, ort_reference, colour_features=False)(image)
    assert all(c.colour is None for c in off.cells)
    on = FieldAnalyzer(bundle, ort_reference, colour_features=True)(image)
    assert [c.colour for c in on.cells] == [c.colour for c in default.cells]
