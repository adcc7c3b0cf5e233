"""Detector stage: whole field -> cell boxes (score threshold and NMS from the bundle)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.analysis.scale import FieldPlan, Tile, fitted_size, in_core, plan_field
from edge.engines.backend import InferenceBackend
from edge.engines.bundle import DetectorSpec


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (K, 4) float32 x1, y1, x2, y2 in field pixels
    scores: np.ndarray  # (K,) float32
    labels: list[str]
    plan: FieldPlan | None = None  # how the field reached the detector (its scale, its tiles)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = w * h
        union = areas[best] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def resize_field(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """``field`` at ``height`` x ``width`` (itself when already that size). INTER_AREA when shrinking:
    it anti-aliases a large camera frame where a bilinear resize (the graph's) would not."""
    if field.shape[:2] == (height, width):
        return field
    shrink = width < field.shape[1] or height < field.shape[0]
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def fit_field(field: np.ndarray, min_size: int | None, max_size: int | None) -> tuple[np.ndarray, float]:
    """Resize so the short side is ``min_size`` and the long side at most ``max_size``.

    Done here rather than in the graph: the graph's float scale can round a side one pixel
    differently from PyTorch (366 px -> 383 or 384), and INTER_AREA anti-aliases a large
    camera frame where the graph's bilinear resize would not.
    """
    height, width = field.shape[:2]
    fitted_h, fitted_w = fitted_size(height, width, min_size, max_size)
    if (fitted_h, fitted_w) == (height, width):
        return field, 1.0
    return resize_field(field, fitted_h, fitted_w), fitted_w / width


class Detector:
    """The bundle's detector on a whole field: fitted to its input size, or, with ``factor`` set
    (detector pixels per field pixel, from the camera's scale against the bundle's), resized to the
    scale it learned and run tile by tile (``edge.analysis.scale``)."""

    def __init__(self, backend: InferenceBackend, spec: DetectorSpec, score_threshold: float | None = None):
        self.backend = backend
        self.spec = spec
        self.score_threshold = spec.score_threshold if score_threshold is None else score_threshold
        self._cell_columns = np.array([spec.labels.index(name) for name in spec.cell_labels])
        self.factor: float | None = None  # None: fit each field to the input, as before scales were known
        self.overlap = 0  # tile overlap at the detector's scale (edge.analysis.scale.tile_overlap)
        self.tile: int | None = None  # largest detector input side (None: the bundle's input_max_size)

    def __call__(self, field: np.ndarray) -> Detections:
        plan = plan_field(field.shape[0], field.shape[1], self.spec, self.factor, self.overlap, self.tile)
        resized = resize_field(field, plan.height, plan.width)
        found = [self._tile(resized, tile) for tile in plan.tiles]
        boxes = np.concatenate([f[0] for f in found])
        scores = np.concatenate([f[1] for f in found])
        columns = np.concatenate([f[2] for f in found])
        if plan.tiled:  # a cell seen whole by two tiles is owned by one; NMS catches what straddles a core edge
            kept = nms(boxes, scores, self.spec.nms_iou, self.spec.max_detections * len(plan.tiles))
            boxes, scores, columns = boxes[kept], scores[kept], columns[kept]
        names = [self.spec.cell_labels[c] for c in columns]
        boxes = (boxes / np.float32(plan.factor)).astype(np.float32)
        return Detections(boxes, scores.astype(np.float32), names, plan)

    def _tile(self, resized: np.ndarray, tile: Tile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (in the resized field), scores and label columns of the cells this tile owns."""
        image = resized[tile.y0 : tile.y1, tile.x0 : tile.x1]
        out = self.backend.run({"images": np.ascontiguousarray(image)[None]})
        cell_scores = out["scores"][:, self._cell_columns]
        scores = cell_scores.max(axis=1)
        columns = cell_scores.argmax(axis=1)
        candidates = np.flatnonzero(scores >= self.score_threshold)
        if candidates.size > self.spec.pre_nms_top_k:
            top = np.argpartition(-scores[candidates], self.spec.pre_nms_top_k)[: self.spec.pre_nms_top_k]
            candidates = candidates[top]
        kept = candidates[
            nms(out["boxes"][candidates], scores[candidates], self.spec.nms_iou, self.spec.max_detections)
        ]
        boxes = out["boxes"][kept].astype(np.float32) + np.float32([tile.x0, tile.y0, tile.x0, tile.y0])
        owned = in_core(boxes, tile.core)
        return boxes[owned], scores[kept][owned], columns[kept][owned]
