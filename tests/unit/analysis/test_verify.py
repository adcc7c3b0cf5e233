"""Engine verification against the reference: matching, agreement, refusal."""

import numpy as np
import pytest

from edge.analysis.field import FieldOutputs
from edge.analysis.verify import compare_models, iou_matrix, matched_pairs, verify_model
from edge.engines.bundle import VerificationSpec
from edge.errors import EngineError


class Scripted:
    """A FieldModel that returns fixed boxes and probabilities, optionally perturbed."""

    def __init__(self, name, boxes, probs, shift=0.0, drop=0):
        self.name = name
        self.boxes = np.asarray(boxes, np.float32)
        self.probs = np.asarray(probs, np.float32)
        self.shift = shift
        self.drop = drop

    @property
    def providers(self):
        return [self.name]

    def __call__(self, image, boxes=None):
        chosen = self.boxes[: len(self.boxes) - self.drop] if boxes is None else np.asarray(boxes, np.float32)
        probs = self.probs[: len(chosen)].copy()
        probs[:, 0] += self.shift
        probs[:, 1] -= self.shift
        return FieldOutputs(chosen, np.ones(len(chosen), np.float32), np.full(len(chosen), 0.9, np.float32), probs)


BOXES = [[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]]
PROBS = [[0.6, 0.4], [0.3, 0.7], [0.55, 0.45]]
FIELDS = [np.zeros((80, 80, 3), np.uint8)] * 2


def test_iou_and_matching():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    b = np.array([[0, 0, 10, 5], [100, 100, 110, 110]], np.float32)
    assert iou_matrix(a, b)[0, 0] == pytest.approx(0.5)
    assert matched_pairs(a, b, 0.5) == 1 and matched_pairs(a, b, 0.51) == 0
    assert matched_pairs(a, np.empty((0, 4), np.float32), 0.5) == 0


def test_identical_models_pass():
    ref = Scripted("ref", BOXES, PROBS)
    report = verify_model(Scripted("same", BOXES, PROBS), ref, FIELDS, VerificationSpec())
    assert report.passed and report.class_agreement == 1.0 and report.detection_agreement == 1.0
    assert report.cells_compared == 6 and report.max_probability_diff == 0.0


def test_a_flipped_class_fails_with_the_figures():
    ref = Scripted("ref", BOXES, PROBS)
    with pytest.raises(EngineError, match=r"class agreement 0\.667 < 0\.95.*probability difference 0\.1000 > 0\.05"):
        verify_model(Scripted("fp16", BOXES, PROBS, shift=-0.1), ref, FIELDS, VerificationSpec())


def test_missed_cells_fail_detection_agreement():
    candidate, reference = Scripted("c", BOXES, PROBS, drop=1), Scripted("r", BOXES, PROBS)
    report = compare_models(candidate, reference, FIELDS, VerificationSpec())
    assert not report.passed and report.detection_agreement == pytest.approx(2 / 3)
    assert report.class_agreement == 1.0  # classified on the reference's boxes: no hidden disagreement


def test_no_fields_is_an_error():
    with pytest.raises(EngineError, match="at least one real field"):
        compare_models(Scripted("c", BOXES, PROBS), Scripted("r", BOXES, PROBS), [], VerificationSpec())
