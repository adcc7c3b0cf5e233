"""The evaluate commands print a JSON summary as their last line and run without torch."""

import json
import shutil

import cv2
import numpy as np

from tests.cli_helpers import marrow_edge


def test_evaluate_fields_on_a_tiny_yolo_set(tmp_path, samples, bundle_dir):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("names: ['WBC', 'RBC', 'Platelets']\n")
    wbc = 0
    for image in sorted(samples.glob("*.jpg"))[:2]:
        shutil.copy(image, root / "images" / image.name)
        label = samples / "labels" / f"{image.stem}.txt"
        shutil.copy(label, root / "labels")
        wbc += sum(line.split()[0] == "0" for line in label.read_text().splitlines() if line.strip())
    proc = marrow_edge(
        "evaluate",
        "fields",
        "--bundle",
        str(bundle_dir),
        "--format",
        "yolo",
        "--labels",
        "WBC",
        str(root),
        "--plots",
        str(tmp_path / "plots"),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["images"] == 2 and summary["ground_truth"] == wbc
    assert 0.0 <= summary["ap50"] <= 1.0 and "coco_ap" in summary
    assert (tmp_path / "plots" / "detection_pr_curve.png").is_file()


def test_evaluate_cells_by_alias_with_unknown_folders_left_out(tmp_path, bundle_dir):
    rng = np.random.default_rng(0)
    for folder in ("PMY", "MO", "not_a_class"):
        (tmp_path / folder).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / folder / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    proc = marrow_edge("evaluate", "cells", "--bundle", str(bundle_dir), str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == 6 and summary["left_out_folders"] == ["not_a_class"]
    assert summary["per_class"]["promyelocyte"]["n"] == 3 and summary["per_class"]["monocyte"]["n"] == 3


def test_evaluate_fields_malformed_labels_is_one_clear_line(tmp_path, samples, bundle_dir):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("names: ['WBC']\n")
    image = sorted(samples.glob("*.jpg"))[0]
    shutil.copy(image, root / "images" / image.name)
    (root / "labels" / f"{image.stem}.txt").write_text("0 0.5 0.5\n")
    proc = marrow_edge("evaluate", "fields", "--bundle", str(bundle_dir), "--format", "yolo", str(root))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{image.stem}.txt:1: expected 'class cx cy w h'" in proc.stderr
