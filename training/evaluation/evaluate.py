"""Evaluate a bundle through the appliance's own inference path (ONNX Runtime on the bundle).

Used by ``marrow-edge evaluate cells`` and ``marrow-edge evaluate fields``; needs no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.adaptation.labels import FIVE_GROUPS
from edge.analysis.classify import Classifier
from edge.analysis.colour import white_balance
from edge.analysis.detect import Detector
from edge.capture.decode import decode_image
from edge.engines.bundle import Bundle, load_bundle
from edge.engines.onnxruntime import OnnxRuntimeBackend
from edge.errors import EdgeError
from training.data.cells import cell_crop
from training.data.readers import FieldAnnotation, read_cell_folders, read_fields, split_samples
from training.evaluation.metrics import classification_report, detection_report, plot_classification, plot_detection
from training.fitting.augment import eval_cell

log = logging.getLogger(__name__)


def folder_to_class(bundle: Bundle, folders: list[str]) -> tuple[dict[str, int], list[str]]:
    """Folder name -> class index by name or alias (case-insensitive); the folders that match none."""
    lookup: dict[str, int] = {}
    for index, spec in enumerate(bundle.manifest.classes):
        for name in (spec.name, *spec.aliases):
            lookup[name.lower()] = index
    mapping = {f: lookup[f.lower()] for f in folders if f.lower() in lookup}
    return mapping, [f for f in folders if f.lower() not in lookup]


def bundle_crops(bundle: Bundle, images: list[np.ndarray]) -> np.ndarray:
    """Single-cell images as the bundle's classifiers were trained to see them."""
    spec = bundle.manifest.classifier
    if spec.training_crops == "central_cell":
        balance = bundle.manifest.colour_normalisation == "background"
        return np.stack([cell_crop(i, spec.crop_size, spec.crop_margin, balance) for i in images])
    return np.stack([eval_cell(i, spec.crop_size) for i in images])


def _grouped(bundle: Bundle, cells_dir: Path, probs: np.ndarray, samples, p_countable: np.ndarray) -> dict:
    """Accuracy over the five groups; a cell called anything outside its folder's group is wrong."""
    group_of = {name: g for g, members in FIVE_GROUPS.items() for name in members}
    predicted = [group_of.get(bundle.class_names[i], "other") for i in probs.argmax(axis=1)]
    truth = [s.label.lower().rstrip("s") for s in samples]
    right = np.array([p == t for p, t in zip(predicted, truth, strict=True)])
    per_group = {
        g: {"n": int(sum(t == g for t in truth)), "accuracy": float(right[[t == g for t in truth]].mean())}
        for g in FIVE_GROUPS
        if any(t == g for t in truth)
    }
    called = {name: int(sum(p == name for p in predicted)) for name in [*FIVE_GROUPS, "other"]}
    return {
        "n": len(samples),
        "grouped_accuracy": float(right.mean()),
        "macro_group_accuracy": float(np.mean([v["accuracy"] for v in per_group.values()])),
        "per_group": per_group,
        "called": called,
        "stage1_countable_rate": float((p_countable >= bundle.manifest.classifier.countable_threshold).mean()),
        "bundle": {"name": bundle.manifest.name, "hash": bundle.short_hash},
        "data": str(cells_dir),
    }


@dataclass
class CellPredictions:
    """One bundle's calls on folder-per-class cells, in sample order."""

    samples: list
    labels: np.ndarray  # true class index (folder by name or alias)
    probs: np.ndarray  # stage-2 ensemble probabilities
    p_countable: np.ndarray  # stage 1
    crops: np.ndarray  # what the classifier saw
    left_out: list[str]  # folders that name no class of the bundle


def predict_cells(
    bundle: Bundle, cells_dir: Path, split: str | None = None, split_seed: int = 0, threads: int = 0
) -> CellPredictions:
    """Cut every cell as the bundle was trained and run the classifier graph (ONNX Runtime) on it."""
    folders = sorted(d.name for d in Path(cells_dir).iterdir() if d.is_dir())
    mapping, unknown = folder_to_class(bundle, folders)
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
    crops = bundle_crops(bundle, [decode_image(s.image.read_bytes(), s.image.name) for s in samples])
    p_countable, probs = classifier(crops)
    labels = np.array([mapping[s.label] for s in samples])
    return CellPredictions(samples, labels, probs, p_countable, crops, unknown)


def evaluate_cells(
    bundle_dir: Path,
    cells_dir: Path,
    split: str | None = None,
    split_seed: int = 0,
    out_dir: Path | None = None,
    threads: int = 0,
    groups: bool = False,
) -> dict:
    """Stage-2 ensemble metrics on folder-per-class cell images, cut as the bundle was trained
    (``ClassifierSpec.training_crops``).

    With ``split`` only that part of the image-wise 70/10/20 split (``split_seed``) is used:
    the held-back test part of a set that also trained the bundle. With ``groups`` the folders
    name five white-cell types (NEUTROPHIL, LYMPHOCYTE, ...): grouped accuracy, as for a set
    from another lab.
    """
    bundle = load_bundle(bundle_dir)
    folders = sorted(d.name for d in Path(cells_dir).iterdir() if d.is_dir())
    if groups:
        wanted = [f for f in folders if f.lower().rstrip("s") in FIVE_GROUPS]
        if not wanted:
            raise EdgeError(f"{cells_dir}: no folder is named after one of {', '.join(FIVE_GROUPS)}")
        samples = read_cell_folders(cells_dir, wanted)
        spec = bundle.manifest.classifier
        classifier = Classifier(
            OnnxRuntimeBackend(bundle.path(spec.file), threads=threads), len(bundle.manifest.classes), max_batch=32
        )
        images = [decode_image(s.image.read_bytes(), s.image.name) for s in samples]
        p_countable, probs = classifier(bundle_crops(bundle, images))
        return _grouped(bundle, cells_dir, probs, samples, p_countable)
    cells = predict_cells(bundle, cells_dir, split, split_seed, threads)
    probs, labels, p_countable, spec = cells.probs, cells.labels, cells.p_countable, bundle.manifest.classifier
    unknown = cells.left_out
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
    balance = bundle.manifest.colour_normalisation == "background"
    detections, truths = [], []
    for record in records:
        image = decode_image(record.image.read_bytes(), record.image.name)
        found = detector(white_balance(image) if balance else image)  # as the count path sees it
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
