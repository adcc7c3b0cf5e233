"""A camera's scale from its fields (edge.analysis.calibrate, issue 46): a detector that sees any disc
finds cells of one size in field pixels at every factor, so the scale follows from their size alone."""

import cv2
import numpy as np
import pytest

from edge.analysis.calibrate import CalibrationError, calibrate
from edge.analysis.detect import Detector
from edge.engines.bundle import DetectorSpec, ScaleSpec
from edge.engines.fake import FakeBlobDetectorBackend

SPEC = DetectorSpec(
    file="d.onnx", opset=17, inputs=[], outputs=[], architecture="fake", labels=["wbc"], cell_labels=["wbc"],
    score_threshold=0.5, nms_iou=0.5, max_detections=100, input_min_size=384, input_max_size=640, graph_resizes=False,
)  # fmt: skip
SCALE = ScaleSpec(
    um_per_px=0.1, range_um_per_px=(0.08, 0.2), cell_side_px_p10=80, cell_side_px_median=100, cell_side_px_p90=120,
    cell_side_px_max=130, cells=500, how="test",
)  # fmt: skip


def _fields(radius: int, count: int, cells_per_field: int = 6, jitter: int = 0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    side = 8 * radius
    fields = []
    for _ in range(count):
        field = np.full((side, int(side * 1.5), 3), 225, np.uint8)
        for k in range(cells_per_field):
            x = (k % 3) * (side // 2) + side // 4
            y = (k // 3) * (side // 2) + side // 4
            r = radius + int(rng.integers(-jitter, jitter + 1))
            cv2.circle(field, (x, y), r, (50, 40, 110), -1)
        fields.append(field)
    return fields


@pytest.mark.parametrize("radius", [25, 50, 100])
def test_cells_of_the_bundles_size_at_a_known_scale_are_found_there(radius):
    # discs of side 2r+1 px; the bundle's median cell is 100 px at 0.1 um/px: the camera is 0.1 x 100 / (2r+1)
    result = calibrate(Detector(FakeBlobDetectorBackend(), SPEC), SCALE, _fields(radius, 5, jitter=2))
    truth = 0.1 * 100 / (2 * radius + 1)
    assert result.um_per_px == pytest.approx(truth, rel=0.03)
    assert result.low <= result.um_per_px <= result.high
    assert result.cells == 30 and result.fields == 5
    assert "um/px" in result.sentence() and "30 cells in 5 field(s)" in result.sentence()


def test_the_detectors_own_scale_is_left_as_it_was():
    detector = Detector(FakeBlobDetectorBackend(), SPEC)
    detector.factor, detector.overlap = 0.7, 11
    calibrate(detector, SCALE, _fields(40, 4))
    assert (detector.factor, detector.overlap) == (0.7, 11)


def test_too_few_cells_is_refused_with_the_reason():
    with pytest.raises(CalibrationError, match=r"cannot be told .* at most 2 cells found .*at least 20 needed"):
        calibrate(Detector(FakeBlobDetectorBackend(), SPEC), SCALE, _fields(40, 1, cells_per_field=2))
    with pytest.raises(CalibrationError, match="no fields"):
        calibrate(Detector(FakeBlobDetectorBackend(), SPEC), SCALE, [])
    blank = [np.full((400, 600, 3), 225, np.uint8)] * 3
    with pytest.raises(CalibrationError, match="at most 0 cells"):
        calibrate(Detector(FakeBlobDetectorBackend(), SPEC), SCALE, blank)
