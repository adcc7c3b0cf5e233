"""The seed paper's metrics, in numpy only (the evaluate commands run without torch).

Classification: accuracy, macro precision / recall / F1, per-class sensitivity, one-vs-rest
ROC AUC, average precision, confusion matrix, PR and ROC curves. Detection: AP at IoU 0.5
(all-point interpolation) and COCO-style AP (mean over IoU 0.50:0.95, 101-point recall grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def precision_recall_f1(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    actual = matrix.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order].astype(bool)
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(positive)[distinct]
    fps = (distinct + 1) - tps
    p, n = positive.sum(), (~positive).sum()
    tpr = np.r_[0.0, tps / p] if p else np.zeros(len(tps) + 1)
    fpr = np.r_[0.0, fps / n] if n else np.zeros(len(fps) + 1)
    return fpr, tpr


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when one side is empty."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return float("nan")
    fpr, tpr = roc_curve(positive, np.asarray(scores, float))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids


def pr_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score threshold (highest threshold first)."""
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order].astype(bool)
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(positive)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / max(positive.sum(), 1)
    return precision, recall


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """Sum over thresholds of (recall step) x precision, as scikit-learn defines AP."""
    positive = np.asarray(positive, bool)
    if not positive.any():
        return float("nan")
    precision, recall = pr_curve(positive, np.asarray(scores, float))
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_report(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, float)
    k = len(class_names)
    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, k)
    precision, recall, f1 = precision_recall_f1(matrix)
    present = matrix.sum(axis=1) > 0
    aucs = [roc_auc(labels == c, probs[:, c]) for c in range(k)]
    aps = [average_precision(labels == c, probs[:, c]) for c in range(k)]

    def mean(values: Sequence[float]) -> float:
        chosen = [v for v, p in zip(values, present, strict=True) if p and not np.isnan(v)]
        return float(np.mean(chosen)) if chosen else float("nan")

    return {
        "n": len(labels),
        "accuracy": float((predicted == labels).mean()) if len(labels) else float("nan"),
        "macro_precision": mean(precision),
        "macro_recall": mean(recall),
        "macro_f1": mean(f1),
        "macro_auc_ovr": mean(aucs),
        "macro_ap": mean(aps),
        "per_class": {
            name: {
                "n": int(matrix[c].sum()),
                "sensitivity": float(recall[c]),
                "precision": float(precision[c]),
                "f1": float(f1[c]),
                "auc_ovr": aucs[c],
                "ap": aps[c],
            }
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
        "classes": list(class_names),
    }


# --- detection ---------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (N, 4) and (M, 4) boxes x1, y1, x2, y2."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(
    detections: Sequence[tuple[np.ndarray, np.ndarray]], truths: Sequence[np.ndarray], iou: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy matching per image, best score first (the PASCAL/COCO rule).

    ``detections[i]`` = (boxes (K, 4), scores (K,)), ``truths[i]`` = boxes (G, 4).
    Returns every detection's score, whether it is a true positive, and the number of truths.
    """
    scores, hits, total = [], [], 0
    for (boxes, det_scores), truth in zip(detections, truths, strict=True):
        total += len(truth)
        order = np.argsort(-np.asarray(det_scores), kind="stable")
        taken = np.zeros(len(truth), bool)
        overlaps = box_iou(np.asarray(boxes)[order], truth) if len(truth) else np.zeros((len(order), 0))
        for row, index in enumerate(order):
            hit = False
            if len(truth):
                candidates = np.where(~taken, overlaps[row], -1.0)
                best = int(candidates.argmax())
                if candidates[best] >= iou:
                    taken[best] = hit = True
            scores.append(float(det_scores[index]))
            hits.append(hit)
    return np.asarray(scores), np.asarray(hits, bool), total


def detection_pr(scores: np.ndarray, hits: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = tp / max(total, 1)
    precision = tp / np.maximum(tp + fp, 1)
    return precision, recall


def ap_all_points(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision envelope (VOC 2010+ all-point interpolation)."""
    r = np.r_[0.0, recall, 1.0]
    p = np.r_[0.0, precision, 0.0]
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def ap_101_points(precision: np.ndarray, recall: np.ndarray) -> float:
    """COCO's interpolation: mean envelope precision at recall 0, 0.01, ..., 1."""
    if len(precision) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    grid = np.linspace(0, 1, 101)
    where = np.searchsorted(recall, grid, side="left")
    values = np.where(where < len(envelope), envelope[np.minimum(where, len(envelope) - 1)], 0.0)
    return float(values.mean())


def detection_report(detections: Sequence[tuple[np.ndarray, np.ndarray]], truths: Sequence[np.ndarray]) -> dict:
    scores, hits, total = match_detections(detections, truths, 0.5)
    precision, recall = detection_pr(scores, hits, total)
    coco = []
    for threshold in np.linspace(0.5, 0.95, 10):
        s, h, t = match_detections(detections, truths, float(threshold))
        coco.append(ap_101_points(*detection_pr(s, h, t)))
    return {
        "images": len(truths),
        "ground_truth": int(total),
        "detections": len(scores),
        "ap50": ap_all_points(precision, recall),
        "ap50_101": coco[0],
        "coco_ap": float(np.mean(coco)),
        "recall_at_all": float(recall[-1]) if len(recall) else 0.0,
        "pr_curve": {"precision": precision.tolist(), "recall": recall.tolist()},
    }


# --- plots -------------------------------------------------------------------------------


def plot_classification(report: dict, probs: np.ndarray, labels: np.ndarray, out_dir: Path) -> list[Path]:
    """Confusion matrix, one-vs-rest PR and ROC curves as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = report["classes"]
    written = []
    matrix = np.asarray(report["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(names), 1 + 0.6 * len(names)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > matrix.max() / 2 else "k")
    fig.tight_layout()
    written.append(out_dir / "confusion_matrix.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    for kind in ("pr", "roc"):
        fig, ax = plt.subplots(figsize=(6, 5))
        for c, name in enumerate(names):
            positive = labels == c
            if not positive.any():
                continue
            if kind == "pr":
                precision, recall = pr_curve(positive, probs[:, c])
                ax.plot(recall, precision, label=f"{name} AP {report['per_class'][name]['ap']:.3f}")
            else:
                fpr, tpr = roc_curve(positive, probs[:, c])
                ax.plot(fpr, tpr, label=f"{name} AUC {report['per_class'][name]['auc_ovr']:.3f}")
        ax.set_xlabel("recall" if kind == "pr" else "false positive rate")
        ax.set_ylabel("precision" if kind == "pr" else "true positive rate")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / f"{kind}_curves.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def plot_detection(report: dict, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(report["pr_curve"]["recall"], report["pr_curve"]["precision"])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"AP@0.5 {report['ap50']:.3f}, COCO AP {report['coco_ap']:.3f}")
    fig.tight_layout()
    path = out_dir / "detection_pr_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
