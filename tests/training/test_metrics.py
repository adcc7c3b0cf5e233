"""Every metric against values computed by hand."""

import numpy as np
import pytest

from training.evaluation.metrics import (
    average_precision,
    classification_report,
    confusion_matrix,
    detection_report,
    roc_auc,
)


def test_confusion_and_macro_scores():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    matrix = confusion_matrix(labels, predicted, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    probs = np.eye(3)[predicted] * 0.8 + 0.1
    report = classification_report(labels, probs, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    # precision a 2/2, b 1/2, c 1/2; recall a 2/3, b 1/2, c 1/1
    assert report["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert report["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]
    assert report["macro_f1"] == pytest.approx(np.mean(f1))
    assert report["per_class"]["a"]["sensitivity"] == pytest.approx(2 / 3)


def test_auc_and_ap():
    positive = np.array([1, 0, 1, 0], bool)
    scores = np.array([0.9, 0.8, 0.4, 0.1])
    # positive-negative pairs ranked right: (0.9>0.8), (0.9>0.1), (0.4>0.1); wrong: (0.4<0.8)
    assert roc_auc(positive, scores) == pytest.approx(3 / 4)
    # ranking P N P N: precision 1 at recall 1/2, 2/3 at recall 1
    assert average_precision(positive, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert np.isnan(roc_auc(np.array([1, 1], bool), np.array([0.2, 0.3])))  # no negatives: undefined
    tied = roc_auc(np.array([1, 0], bool), np.array([0.5, 0.5]))
    assert tied == pytest.approx(0.5)


def test_detection_ap():
    truths = [np.array([[0, 0, 10, 10]], float), np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)]
    detections = [
        (np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), np.array([0.9, 0.8])),
        (np.array([[0, 0, 10, 10], [0.5, 0, 10.5, 10]], float), np.array([0.7, 0.6])),  # the second: duplicate
    ]
    report = detection_report(detections, truths)
    # ranked: TP (1/3, 1), FP, TP (2/3, 2/3), FP (duplicate of a matched truth)
    assert report["ap50"] == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    # COCO grid at IoU 0.5: 34 recall points at precision 1, 33 at 2/3, the rest 0
    assert report["ap50_101"] == pytest.approx((34 + 33 * 2 / 3) / 101)
    assert report["ground_truth"] == 3 and report["detections"] == 4
    assert report["recall_at_all"] == pytest.approx(2 / 3)
    assert report["coco_ap"] == pytest.approx(report["ap50_101"])  # true positives overlap exactly


def test_detection_with_no_detections():
    report = detection_report([(np.zeros((0, 4)), np.zeros(0))], [np.array([[0, 0, 5, 5]], float)])
    assert report["ap50"] == 0.0 and report["coco_ap"] == 0.0
