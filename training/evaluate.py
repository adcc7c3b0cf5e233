"""Evaluate a bundle through the appliance's own inference path (ONNX Runtime on the bundle).

Used by ``marrow-edge evaluate cells`` and ``marrow-edge evaluate fields``; needs no torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.analysis.classify import Classifier
from edge.analysis.detect import Detector
from edge.capture.decode import decode_image
from edge.engines.bundle import Bundle, load_bundle
from edge.engines.onnxruntime import OnnxRuntimeBackend
from edge.errors import EdgeError
from training.augment import eval_cell
from training.metrics import classification_report, detection_report, plot_classification, plot_detection
from training.readers import FieldAnnotation, read_cell_folders, read_fields, split_samples

log = logging.getLogger(__name__)


def _folder_to_class(bundle: Bundle, folders: list[str]) -> tuple[dict[str, int], list[str]]:
    """Folder name -> class index by name or alias (case-insensitive); the folders that match none."""
    lookup: dict[str, int] = {}
    for index, spec in enumerate(bundle.manifest.classes):
        for name in (spec.name, *spec.aliases):
            lookup[name.lower()] = index
    mapping = {f: lookup[f.lower()] for f in folders if f.lower() in lookup}
    return mapping, [f for f in folders if f.lower() not in lookup]


def evaluate_cells(
    bundle_dir: Path,
    cells_dir: Path,
    split: str | None = None,
    split_seed: int = 0,
    out_dir: Path | None = None,
    threads: int = 0,
) -> dict:
    """Stage-2 ensemble metrics on folder-per-class crops, each image whole at the crop size.

    With ``split`` only that part of the image-wise 70/10/20 split (``split_seed``) is used:
    the held-back test part of a set that also trained the bundle.
    """
    bundle = load_bundle(bundle_dir)
    folders = sorted(d.name for d in Path(cells_dir).iterdir() if d.is_dir())
    mapping, unknown = _folder_to_class(bundle, folders)
    if not mapping:
        raise EdgeError(f"{cells_dir}: no folder is named after a class (or alias) of bundle {bundle.manifest.name}")
    if unknown:
        log.warning("folders not in the bundle, left out: %s", ", ".join(unknown))
    samples = read_cell_folders(cells_dir, sorted(mapping))
    if split:
        samples = split_samples(samples, seed=split_seed)[split]
    spec = bundle.manifest.classifier
    backend = OnnxRuntimeBackend(bundle.path(spec.file), threads=threads)
    classifier = Classifier(backend, len(bundle.manifest.classes), max_batch=32)
    crops = np.stack([eval_cell(decode_image(s.image.read_bytes(), s.image.name), spec.crop_size) for s in samples])
    p_countable, probs = classifier(crops)
    labels = np.array([mapping[s.label] for s in samples])
    report = classification_report(labels, probs, bundle.class_names)
    # only classes present in the folders count in the macro means
    report["stage1_countable_rate"] = float((p_countable >= spec.countable_threshold).mean())
    report["left_out_folders"] = unknown
    report["bundle"] = {"name": bundle.manifest.name, "hash": bundle.short_hash}
    report["split"] = split or "all"
    if out_dir:
        report["plots"] = [str(p) for p in plot_classification(report, probs, labels, out_dir)]
    return report


def detect_fields(
    bundle: Bundle, records: list[FieldAnnotation], labels: list[str] | None = None, threads: int = 0
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """Every detection (no score threshold: AP needs the whole ranking) and the ground-truth
    boxes of ``labels`` (default: the bundle's cell labels, matched case-insensitively)."""
    spec = bundle.manifest.detector
    wanted = {name.lower() for name in (labels or spec.cell_labels)}
    detector = Detector(OnnxRuntimeBackend(bundle.path(spec.file), threads=threads), spec, score_threshold=0.0)
    detections, truths = [], []
    for record in records:
        found = detector(decode_image(record.image.read_bytes(), record.image.name))
        detections.append((found.boxes, found.scores))
        boxes = [[b.x1, b.y1, b.x2, b.y2] for b in record.boxes if b.label.lower() in wanted]
        truths.append(np.array(boxes, np.float32).reshape(-1, 4))
    return detections, truths


def evaluate_fields(
    bundle_dir: Path,
    fmt: str,
    data_dir: Path,
    labels: list[str] | None = None,
    split: str | None = None,
    out_dir: Path | None = None,
    threads: int = 0,
) -> dict:
    """Detector AP@0.5 and COCO AP on annotated fields; ground truth = boxes of ``labels``
    (default: the bundle's cell labels, matched case-insensitively)."""
    bundle = load_bundle(bundle_dir)
    spec = bundle.manifest.detector
    records = read_fields(fmt, data_dir)
    if split:
        records = [r for r in records if r.split == split]
        if not records:
            raise EdgeError(f"{data_dir}: no fields in split {split!r}")
    detections, truths = detect_fields(bundle, records, labels, threads)
    report = detection_report(detections, truths)
    at = spec.score_threshold
    kept = [(b[s >= at], s[s >= at]) for b, s in detections]
    operating = detection_report(kept, truths)
    report["at_bundle_threshold"] = {
        "score_threshold": at,
        "recall": operating["recall_at_all"],
        "precision": float(np.mean(operating["pr_curve"]["precision"][-1:]) if operating["detections"] else 0.0),
    }
    report["bundle"] = {"name": bundle.manifest.name, "hash": bundle.short_hash}
    report["split"] = split or "all"
    if out_dir:
        report["plots"] = [str(plot_detection(report, out_dir))]
    report.pop("pr_curve")
    return report
