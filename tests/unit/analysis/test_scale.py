"""Fields brought to the bundle's scale, in tiles (edge.analysis.scale, issue 46)."""

import math

import cv2
import numpy as np
import pytest

from edge.analysis.detect import Detector
from edge.analysis.scale import fitted_size, in_core, plan_field, scale_factor, tile_overlap
from edge.engines.bundle import DetectorSpec, ScaleSpec
from edge.engines.fake import FakeBlobDetectorBackend


def _spec(**kw) -> DetectorSpec:
    base = dict(
        file="d.onnx", opset=17, inputs=[], outputs=[], architecture="fake", labels=["wbc"], cell_labels=["wbc"],
        score_threshold=0.5, nms_iou=0.5, max_detections=100, input_min_size=384, input_max_size=640,
        graph_resizes=False,
    )  # fmt: skip
    return DetectorSpec(**(base | kw))


def _scale(**kw) -> ScaleSpec:
    base = dict(
        um_per_px=0.12, range_um_per_px=(0.08, 0.2), cell_side_px_p10=60, cell_side_px_median=100,
        cell_side_px_p90=140, cell_side_px_max=170, cells=100, how="test",
    )  # fmt: skip
    return ScaleSpec(**(base | kw))


def test_without_a_factor_the_field_is_fitted_in_one_input_as_before():
    plan = plan_field(2048, 2448, _spec(), None)
    assert (plan.height, plan.width) == fitted_size(2048, 2448, 384, 640) == (384, 459)
    assert len(plan.tiles) == 1 and not plan.tiled
    assert plan.factor == pytest.approx(459 / 2448)


def test_the_factor_is_the_cameras_scale_over_the_bundles():
    assert scale_factor(0.06, _scale()) == pytest.approx(0.5)  # finer camera: the field shrinks by half
    assert scale_factor(0.24, _scale()) == pytest.approx(2.0)  # coarser camera: the field is enlarged
    assert scale_factor(None, _scale()) is None and scale_factor(0.1, None) is None
    assert tile_overlap(_scale()) == math.ceil(1.25 * 170) and tile_overlap(None) == 0


@pytest.mark.parametrize(("height", "width", "factor"), [(2048, 2448, 0.5), (1080, 1920, 0.8), (480, 640, 1.7)])
def test_tiles_cover_the_field_and_their_cores_share_it_out(height, width, factor):
    overlap = 200
    plan = plan_field(height, width, _spec(), factor, overlap)
    assert (plan.height, plan.width) == (round(height * factor), round(width * factor))
    assert all(t.x1 - t.x0 <= 640 and t.y1 - t.y0 <= 640 for t in plan.tiles)
    rng = np.random.default_rng(0)
    # every point of the resized field lies in exactly one core
    points = rng.uniform([0, 0], [plan.width, plan.height], size=(2000, 2)).astype(np.float32)
    boxes = np.concatenate([points, points], axis=1)
    owners = np.stack([in_core(boxes, t.core) for t in plan.tiles]).sum(axis=0)
    assert owners.tolist() == [1] * len(points)
    # a cell no larger than the overlap lies whole inside the tile that owns its centre
    side = overlap
    for x, y in points[:300]:
        tile = next(t for t in plan.tiles if in_core(np.array([[x, y, x, y]]), t.core)[0])
        x1, y1 = max(x - side / 2, 0), max(y - side / 2, 0)
        x2, y2 = min(x + side / 2, plan.width), min(y + side / 2, plan.height)
        assert tile.x0 <= x1 and x2 <= tile.x1 and tile.y0 <= y1 and y2 <= tile.y1


def _discs(height: int, width: int, centres: np.ndarray, radius: int) -> np.ndarray:
    field = np.full((height, width, 3), 220, np.uint8)
    for x, y in centres:
        cv2.circle(field, (int(x), int(y)), radius, (40, 30, 90), -1)
    return field


def test_a_large_field_is_detected_tile_by_tile_each_cell_once_in_field_pixels():
    # a 2448x2048 camera at half the bundle's pixel size: cells of 120 px become 60 px at the detector's scale
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(np.arange(150, 2400, 270), np.arange(150, 2000, 270)), axis=-1).reshape(-1, 2)
    centres = grid + rng.integers(-40, 40, size=grid.shape)
    field = _discs(2048, 2448, centres, 60)
    backend = FakeBlobDetectorBackend()
    detector = Detector(backend, _spec())
    detector.factor, detector.overlap = 0.5, tile_overlap(_scale())
    found = detector(field)
    plan = found.plan
    assert plan is not None and plan.tiled and len(backend.calls) == len(plan.tiles)
    assert all(shape[1] <= 640 and shape[2] <= 640 for shape in backend.calls)
    assert len(found.boxes) == len(centres)  # none lost at a tile's edge, none counted twice
    middles = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
    nearest = np.linalg.norm(middles[:, None] - centres[None].astype(np.float32), axis=2).min(axis=0)
    assert nearest.max() < 4  # every disc found, in the field's own pixels
    sides = found.boxes[:, 2] - found.boxes[:, 0]
    assert np.allclose(sides, 121, atol=4)


def test_a_fitted_field_shrinks_cells_the_scaled_one_keeps_them():
    """The failure issue 46 describes, on a detector that loses cells under 12 px."""
    centres = np.array([[200 + 300 * i, 300 + 300 * j] for i in range(8) for j in range(6)])
    field = _discs(2048, 2448, centres, 30)

    class SmallBlind(FakeBlobDetectorBackend):
        def run(self, inputs):
            out = super().run(inputs)
            keep = (out["boxes"][:, 2] - out["boxes"][:, 0]) >= 12
            return {"boxes": out["boxes"][keep], "scores": out["scores"][keep]}

    fitted = Detector(SmallBlind(), _spec())(field)  # 2448 -> 459 px wide: 60 px discs become 11 px
    scaled = Detector(SmallBlind(), _spec())
    scaled.factor, scaled.overlap = 0.5, 100
    assert len(fitted.boxes) == 0
    assert len(scaled(field).boxes) == len(centres)
