"""Cell boxes from nuclei, crops cut as the count path cuts them, composed marrow fields."""

import cv2
import numpy as np

from training.data.cells import CYTOPLASM, cell_crop, central_cell_box
from training.data.compose import compose_field, cut_patch


def _smear(width=160, height=120) -> np.ndarray:
    image = np.full((height, width, 3), (232, 226, 236), np.uint8)
    cv2.circle(image, (30, 30), 14, (215, 180, 200), -1)  # a red cell: not bluer than green
    return image


def test_the_central_nucleus_gives_the_box():
    image = _smear()
    cv2.circle(image, (84, 58), 30, (200, 170, 225), -1)  # pale cytoplasm
    cv2.circle(image, (84, 58), 20, (90, 40, 140), -1)  # nucleus
    cv2.circle(image, (150, 110), 12, (90, 40, 140), -1)  # a neighbour's nucleus at the corner
    box, found = central_cell_box(image)
    assert found
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert abs(cx - 84) <= 2 and abs(cy - 58) <= 2
    assert abs((box[2] - box[0]) - 41 * CYTOPLASM) <= 6


def test_the_lobes_of_one_cell_make_one_box():
    image = _smear()
    for x, y in ((70, 55), (82, 66), (94, 55)):  # a segmented neutrophil's lobes
        cv2.circle(image, (x, y), 7, (90, 40, 140), -1)
    box, found = central_cell_box(image)
    assert found
    assert box[0] < 63 and box[2] > 101  # spans every lobe


def test_no_nucleus_falls_back_to_the_central_half():
    box, found = central_cell_box(_smear())
    assert not found
    assert np.allclose(box, [50, 30, 110, 90])


def test_cell_crop_is_square_and_padded_with_the_background():
    image = _smear(80, 80)
    cv2.circle(image, (40, 40), 30, (90, 40, 140), -1)  # the cell fills the image (a tight crop)
    crop = cell_crop(image, 64, margin=0.5)
    assert crop.shape == (64, 64, 3)
    corner = crop[1, 1].astype(int)
    assert np.all(np.abs(corner - 235) < 12), corner  # balanced background, not a smeared edge


def test_composed_fields_keep_every_box_inside_and_apart():
    rng = np.random.default_rng(0)
    patches = []
    for code in ("BLA", "LYT", "NGS", "ART", "MON", "EOS"):
        image = _smear(100, 100)
        cv2.circle(image, (50, 50), 22, (90, 40, 140), -1)
        patches.append(cut_patch(image, code))
    field, boxes, codes = compose_field(patches, rng, size=(320, 240), scale=(0.6, 0.8))
    assert field.shape == (240, 320, 3) and field.dtype == np.uint8
    assert len(boxes) == len(codes) >= 3
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 320) and np.all(boxes[:, 3] <= 240)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            w = min(a[2], b[2]) - max(a[0], b[0])
            h = min(a[3], b[3]) - max(a[1], b[1])
            smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
            assert max(w, 0) * max(h, 0) <= 0.1 * smaller + 1e-6
    # every box holds its nucleus: the densest pixels sit inside it
    x1, y1, x2, y2 = boxes[0].astype(int)
    assert field[y1:y2, x1:x2, 1].min() < 80


def test_stage1_cuts_field_boxes_at_the_cells_cached_side(tmp_path):
    """Crops cached at 229 px (160 px input): the TXL red-cell and platelet boxes are cut at 229 too,
    so one stage-1 set holds one scale (they were cut at a fixed 184 px)."""
    import pytest

    from training.data.readers import Box, FieldAnnotation
    from training.fitting.marrow import _check_side, stage1_set

    side = 229
    images = np.full((4, side, side, 3), 200, np.uint8)
    crops = {"images": images, "codes": np.array(["BLA", "NIF", "SNE", "LYT"]), "sets": np.array(["m"] * 4)}
    field = _smear(320, 240)
    cv2.imwrite(str(tmp_path / "field.jpg"), field)
    boxes = [Box(20, 20, 44, 44, "RBC"), Box(200, 100, 212, 112, "Platelets"), Box(100, 100, 160, 160, "WBC")]
    record = FieldAnnotation(tmp_path / "field.jpg", 320, 240, boxes, "train")
    built, _, sources = stage1_set(crops, [record], np.random.default_rng(0))
    assert {b.shape for b in built} == {(side, side, 3)}
    assert sum(v for k, v in sources.items() if k.startswith("txl")) == 2  # the white cell's box is not one
    _check_side(side, 160)
    with pytest.raises(SystemExit, match="--size 160 needs crops cached at 229 px"):
        _check_side(184, 160)


def test_every_split_of_a_subset_of_codes_is_the_classifiers_split():
    """The guard, the countable threshold and the held-back NIF+ART figure read subsets of a set's codes;
    split apart from the other codes they drew other cells (84 of the 180 'test' NIF+ART cells were training cells)."""
    import pytest

    from training.bundle.guard import _split_paths
    from training.data.compose import DATA
    from training.data.splits import cell_split, cell_splits

    if not (DATA / "matek_bm").is_dir() or not (DATA / "pbc_cells").is_dir():
        pytest.skip(f"needs ../shared/data (matek_bm, pbc_cells) at {DATA}")
    for name, codes in (("matek_bm", ["NIF", "ART"]), ("matek_bm", ["BLA", "LYT"]), ("pbc_cells", ["SNE", "PMY"])):
        trained = {s.image for s in cell_splits(DATA, name)["train"]}
        for split in ("val", "test"):
            wanted = [s.image for s in cell_splits(DATA, name)[split] if s.label in codes]
            assert [s.image for s in cell_split(DATA, name, split, codes)] == wanted
            assert set(_split_paths(DATA, name, codes, split)) == set(wanted)
            assert not trained & set(wanted)


def test_stain_moderate_keeps_the_colour_that_stain_robust_may_take_away():
    """A deep-blue (blast-like) patch: under the moderate preset its hue and saturation stay
    near the original in every draw; the robust preset desaturates or turns some draws far."""
    from training.fitting.augment import AUGMENTS, colour_and_blur

    blue = np.zeros((32, 32, 3), np.uint8)
    blue[:] = (60, 70, 170)  # RGB

    def hue_sat(image):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(float)
        return hsv[:, 0].mean(), hsv[:, 1].mean()

    hue0, sat0 = hue_sat(blue)
    worst = {}
    for name in ("stain-moderate", "stain-robust"):
        rng = np.random.default_rng(0)
        draws = [hue_sat(colour_and_blur(blue, rng, AUGMENTS[name])) for _ in range(200)]
        worst[name] = (max(abs(h - hue0) for h, _ in draws), min(s for _, s in draws) / sat0)
    assert worst["stain-moderate"][0] <= 12 and worst["stain-moderate"][1] >= 0.5, worst
    assert worst["stain-robust"][0] > 20 or worst["stain-robust"][1] < 0.4, worst


def test_stage2_records_the_augmentation_it_trained_with(tmp_path):
    """``--augment`` picks the preset by name and run.json says which (with its parameters);
    ``--leave-out`` drops a code's cells from stage 2's training and validation, and says so."""
    import json

    from training.fitting.augment import STAIN_MODERATE
    from training.fitting.marrow import main

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6)):
        codes = np.array(["BLA", "LYT", "MON"] * (n // 3))
        images = rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
        np.savez(tmp_path / f"{split}.npz", images=images, codes=codes, sets=np.array(["matek_bm"] * n))
    out = tmp_path / "run"
    main(["stage2", "--crops", str(tmp_path), "--arch", "mobilenet_v3_small", "--epochs", "1", "--size", "32",
          "--threads", "1", "--augment", "stain-moderate", "--leave-out", "MON", "--out", str(out)])  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["left_out_codes"] == ["MON"] and run["counts"] == {"train": 8, "val": 4}
    augment = run["augment"]
    assert augment["name"] == "stain-moderate" and augment["grey_p"] == STAIN_MODERATE.grey_p == 0.0
    assert augment["hue"] == STAIN_MODERATE.hue


def test_a_bundle_names_each_models_augmentation(tmp_path):
    """The recipe a bundle records says which preset trained each model, also for runs from before
    presets had names (their parameters match one), and a warm start's earlier phase keeps its own."""
    import json
    from dataclasses import asdict

    from training.bundle.starter import _recipe_record, _run_info, recipe_lines
    from training.fitting.augment import STAIN_ROBUST

    recipe = {"epochs": 1}
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, init, augment in (
        (first, "imagenet", asdict(STAIN_ROBUST)),  # an old run.json: parameters, no name
        (second, str(first / "best.pt"), {"name": "stain-moderate"}),
    ):
        folder.mkdir()
        run = {"arch": "efficientnet_lite0", "init": init, "recipe": recipe, "augment": augment}
        (folder / "run.json").write_text(json.dumps(run))
        (folder / "history.json").write_text(json.dumps({"history": [{"seconds": 10}]}))
    record = _recipe_record(_run_info(second))
    assert record["augment"] == "stain-moderate" and record["continued_from"]["augment"] == "stain-robust"
    lines = recipe_lines({"stage2_0": record})
    assert "augmentation stain-moderate" in lines[0] and "augmentation stain-robust" in lines[1]
    custom = _recipe_record(_run_info(first) | {"augment": {"hue": 1.0}})
    assert custom["augment"] == "custom"
