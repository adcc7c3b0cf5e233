"""Before an engine is used: compare it with ONNX Runtime FP32 on fixed real fields.

Detection: boxes matched one to one by IoU (the bundle's ``verification.box_iou``).
Classification: both models classify the reference's boxes, so a missed box does not hide
a class disagreement. Tolerances come from the bundle (``verification``); a failed check
raises :class:`~edge.errors.EngineError` and the engine is not used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edge.analysis.field import FieldModel
from edge.engines.bundle import VerificationSpec
from edge.errors import EngineError

log = logging.getLogger(__name__)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x1, y1, x2, y2 boxes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float32)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def matched_pairs(a: np.ndarray, b: np.ndarray, threshold: float) -> int:
    """Greedy one-to-one matches with IoU >= threshold, best overlaps first."""
    iou = iou_matrix(a, b)
    matched = 0
    while iou.size and iou.max() >= threshold:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        matched += 1
        iou[i, :] = -1.0
        iou[:, j] = -1.0
    return matched


@dataclass(frozen=True)
class VerificationReport:
    candidate: str
    reference: str
    fields: int
    reference_boxes: int
    candidate_boxes: int
    matched_boxes: int
    detection_agreement: float
    cells_compared: int
    class_agreement: float
    max_probability_diff: float
    max_countable_diff: float
    passed: bool
    failures: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def compare_models(
    candidate: FieldModel,
    reference: FieldModel,
    fields: Sequence[np.ndarray],
    spec: VerificationSpec,
) -> VerificationReport:
    if not fields:
        raise EngineError("verification needs at least one real field")
    ref_boxes = cand_boxes = matched = 0
    agree = compared = 0
    worst_prob = worst_countable = 0.0
    for image in fields:
        ref = reference(image)
        cand = candidate(image)
        ref_boxes += len(ref.boxes)
        cand_boxes += len(cand.boxes)
        matched += matched_pairs(ref.boxes, cand.boxes, spec.box_iou)
        if len(ref.boxes):
            same = candidate(image, boxes=ref.boxes)  # classify exactly the reference's cells
            agree += int((same.probs.argmax(axis=1) == ref.probs.argmax(axis=1)).sum())
            compared += len(ref.boxes)
            worst_prob = max(worst_prob, float(np.abs(same.probs - ref.probs).max()))
            worst_countable = max(worst_countable, float(np.abs(same.p_countable - ref.p_countable).max()))
    larger = max(ref_boxes, cand_boxes)
    detection_agreement = matched / larger if larger else 1.0
    class_agreement = agree / compared if compared else 1.0
    failures = []
    if detection_agreement < spec.min_detection_agreement:
        failures.append(f"detection agreement {detection_agreement:.3f} < {spec.min_detection_agreement}")
    if class_agreement < spec.min_class_agreement:
        failures.append(f"class agreement {class_agreement:.3f} < {spec.min_class_agreement}")
    if max(worst_prob, worst_countable) > spec.max_probability_diff:
        failures.append(f"probability difference {max(worst_prob, worst_countable):.4f} > {spec.max_probability_diff}")
    return VerificationReport(
        candidate=candidate.name,
        reference=reference.name,
        fields=len(fields),
        reference_boxes=ref_boxes,
        candidate_boxes=cand_boxes,
        matched_boxes=matched,
        detection_agreement=detection_agreement,
        cells_compared=compared,
        class_agreement=class_agreement,
        max_probability_diff=worst_prob,
        max_countable_diff=worst_countable,
        passed=not failures,
        failures=failures,
    )


def verify_model(
    candidate: FieldModel, reference: FieldModel, fields: Sequence[np.ndarray], spec: VerificationSpec
) -> VerificationReport:
    """:func:`compare_models`, logged, raising when the candidate is out of tolerance."""
    report = compare_models(candidate, reference, fields, spec)
    log.info(
        "verified %s against %s on %d fields: boxes %d/%d matched (%.3f), classes %.3f of %d, "
        "max probability difference %.2e",
        report.candidate,
        report.reference,
        report.fields,
        report.matched_boxes,
        max(report.reference_boxes, report.candidate_boxes),
        report.detection_agreement,
        report.class_agreement,
        report.cells_compared,
        max(report.max_probability_diff, report.max_countable_diff),
    )
    if not report.passed:
        raise EngineError(
            f"{report.candidate} does not match {report.reference} on the verification fields: "
            + "; ".join(report.failures)
        )
    return report
