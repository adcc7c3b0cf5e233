import numpy as np
import pytest

from edge.analysis.detect import Detector, nms
from edge.engines.bundle import DetectorSpec
from edge.engines.fake import FakeDetectorBackend


def _spec(**kw) -> DetectorSpec:
    base = dict(
        file="d.onnx",
        opset=17,
        inputs=[],
        outputs=[],
        architecture="fake",
        labels=["wbc", "rbc"],
        cell_labels=["wbc"],
        score_threshold=0.5,
        nms_iou=0.5,
        max_detections=10,
    )
    base.update(kw)
    return DetectorSpec(**base)


def test_nms_keeps_best_of_overlapping_and_separate_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.9, 0.95, 0.3, 0.1], np.float32)
    assert nms(boxes, scores, 0.5, 10).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99, 10).tolist() == [1, 0, 2, 3]  # nothing overlaps that much
    assert nms(boxes, scores, 0.5, 1).tolist() == [1]


def test_nms_edge_cases():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5, 5).tolist() == []
    degenerate = np.array([[5, 5, 5, 5], [5, 5, 5, 5]], np.float32)
    assert nms(degenerate, np.array([0.2, 0.1], np.float32), 0.5, 5).tolist() == [0, 1]


def test_detector_threshold_cell_labels_and_limit():
    boxes = np.array([[0, 0, 10, 10], [100, 100, 120, 120], [200, 0, 230, 40], [300, 0, 330, 30]], np.float32)
    # columns: wbc, rbc. Anchor 1 is a confident RBC: not a cell for the classifier.
    scores = np.array([[0.9, 0.1], [0.2, 0.99], [0.6, 0.0], [0.4, 0.0]], np.float32)
    backend = FakeDetectorBackend(boxes, scores)
    found = Detector(backend, _spec())(np.zeros((400, 400, 3), np.uint8))
    assert found.boxes.tolist() == boxes[[0, 2]].tolist()
    assert found.scores.tolist() == pytest.approx([0.9, 0.6])
    assert found.labels == ["wbc", "wbc"]
    assert backend.calls == [(1, 400, 400, 3)]
    lower = Detector(backend, _spec(max_detections=2), score_threshold=0.3)(np.zeros((8, 8, 3), np.uint8))
    assert lower.scores.tolist() == pytest.approx([0.9, 0.6])


def test_pre_nms_top_k_bounds_the_candidates():
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(6)], np.float32)
    scores = np.linspace(0.6, 0.9, 6, dtype=np.float32)[:, None]
    spec = _spec(labels=["wbc"], pre_nms_top_k=3)
    found = Detector(FakeDetectorBackend(boxes, scores), spec)(np.zeros((8, 8, 3), np.uint8))
    assert found.scores.tolist() == pytest.approx([0.9, 0.84, 0.78])


def test_cell_labels_must_be_known():
    with pytest.raises(ValueError, match="cell_labels not among labels"):
        _spec(cell_labels=["platelet"])


def test_fit_field_short_side_long_side_cap_and_boxes_back_in_field_pixels():
    from edge.analysis.detect import fit_field

    small, scale = fit_field(np.zeros((366, 369, 3), np.uint8), 384, 640)
    assert small.shape[:2] == (384, 387) and scale == pytest.approx(387 / 369)
    wide, scale = fit_field(np.zeros((1536, 4096, 3), np.uint8), 384, 640)
    assert wide.shape[:2] == (240, 640) and scale == pytest.approx(640 / 4096)
    same, scale = fit_field(np.zeros((384, 500, 3), np.uint8), 384, 640)
    assert same.shape[:2] == (384, 500) and scale == 1.0
    assert fit_field(np.zeros((10, 20, 3), np.uint8), None, None)[1] == 1.0

    boxes = np.array([[40, 40, 80, 80]], np.float32)  # in the fitted field's pixels
    backend = FakeDetectorBackend(boxes, [[0.9]])
    spec = _spec(labels=["wbc"], input_min_size=384, input_max_size=640)
    found = Detector(backend, spec)(np.zeros((768, 1000, 3), np.uint8))  # fitted at scale 0.5
    assert backend.calls == [(1, 384, 500, 3)]
    assert found.boxes.tolist() == [[80, 80, 160, 160]]
