"""Where the site's cells come from: the review store's signed slides, or a folder per label."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.adaptation.sources import cells_from_folder, cells_from_store
from edge.errors import EdgeError
from tests.unit.review.slides import make_desk


def test_signed_slides_give_their_cells_with_the_labels_a_person_signed(tmp_path):
    desk = make_desk(tmp_path / "store.db")
    slide = desk.slide_id
    with pytest.raises(EdgeError, match="review and sign"):
        cells_from_store(tmp_path / "store.db", 64, corrected_only=False)
    desk.reclassify(slide, [0, 1], "lymphocyte", "Ana Lima")
    desk.sign(slide, "Ana Lima", "4321")
    cells = cells_from_store(tmp_path / "store.db", 64, corrected_only=False)
    # 6 blasts (two relabelled lymphocyte), 3 lymphocytes, 1 monocyte; the stage-1 reject is not a cell type
    assert sorted(cells.labels) == sorted(["blast"] * 4 + ["lymphocyte"] * 5 + ["monocyte"])
    assert cells.crops.shape == (10, 64, 64, 3) and cells.crops.dtype == np.uint8
    assert set(cells.slides) == {slide}
    corrected = cells_from_store(tmp_path / "store.db", 64, corrected_only=True)
    assert corrected.labels == ["lymphocyte", "lymphocyte"]


def test_a_missing_store_or_folder_is_said(tmp_path):
    with pytest.raises(EdgeError, match="no such store"):
        cells_from_store(tmp_path / "none.db", 64, corrected_only=False)
    with pytest.raises(EdgeError, match="not a folder"):
        cells_from_folder(tmp_path / "none", 64)
    (tmp_path / "empty" / "NEUTROPHIL").mkdir(parents=True)
    with pytest.raises(EdgeError, match="no crops"):
        cells_from_folder(tmp_path / "empty", 64)


def test_folder_crops_are_resized_and_junk_left_out(tmp_path):
    (tmp_path / "LY").mkdir()
    cv2.imwrite(str(tmp_path / "LY" / "a.png"), np.full((100, 100, 3), 200, np.uint8))
    (tmp_path / "LY" / "b.png").write_bytes(b"\x00garbage")
    (tmp_path / "LY" / "notes.txt").write_text("not a crop")
    cells = cells_from_folder(tmp_path, 64)
    assert cells.crops.shape == (1, 64, 64, 3) and cells.labels == ["LY"]
