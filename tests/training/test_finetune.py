"""Fine-tuning a bundle from reviewed cells: promoted only when not worse on held-back data,
the comparison stored in bundle.json either way."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.engines.bundle import load_bundle
from training.fitting import finetune

BASE = Path(__file__).resolve().parents[2] / "models" / "marrow-bm"


def test_promotion_needs_the_candidate_not_worse_than_the_base():
    assert finetune.promote({"macro_f1": 0.70}, {"macro_f1": 0.70})[0]
    assert finetune.promote({"macro_f1": 0.70}, {"macro_f1": 0.71})[0]
    promoted, why = finetune.promote({"macro_f1": 0.70}, {"macro_f1": 0.6999})
    assert not promoted and "< base" in why


def _cache(folder: Path, rng: np.random.Generator) -> None:
    """A tiny crops cache in the real layout: uint8 crops, dataset codes, set names."""
    folder.mkdir()
    codes = np.array(["BLA", "LYT", "MON", "SNE", "EO", "NIF"] * 4)
    sets = np.array(["matek_bm" if c in ("BLA", "LYT", "MON", "NIF") else "pbc_cells" for c in codes])
    for split in ("train", "val", "test"):
        images = rng.integers(0, 255, (len(codes), 184, 184, 3), np.uint8)
        np.savez(folder / f"{split}.npz", images=images, codes=codes, sets=sets, paths=np.array(["x"] * len(codes)))


def test_a_finetune_run_stores_its_comparison_and_obeys_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    _cache(tmp_path / "crops", rng)
    export = tmp_path / "export"
    for name in ("blast", "lymphocyte", "not_countable"):
        (export / name).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(export / name / f"s_{i}.jpg"), rng.integers(0, 255, (128, 128, 3), np.uint8))
    (export / "manifest.json").write_text(
        json.dumps({"slides": [{"slide_id": "S1", "reviewed_by": ["Ana Lima"]}], "cells": {"blast": 2}})
    )
    out = tmp_path / "lab-bundle"
    args = [
        "--base", str(BASE), "--reviewed", str(export), "--crops", str(tmp_path / "crops"), "--out", str(out),
        "--version", "9.9.9-test", "--epochs", "1", "--replay", "12", "--repeat", "1", "--threads", "1",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        finetune.main(args)
    written = out if exit_.value.code == 0 else out.with_name(out.name + ".rejected")
    assert written.is_dir() and not (out if written != out else out.with_name(out.name + ".rejected")).exists()
    manifest = load_bundle(written).manifest  # a complete, loadable bundle either way
    record = manifest.provenance["finetune"]
    assert record["promoted"] == (exit_.value.code == 0)
    assert record["promoted"] == (record["candidate_test"]["macro_f1"] >= record["base_test"]["macro_f1"])
    assert record["reviewed"][0]["reviewed_by"] == ["Ana Lima"] and record["base"].startswith("marrow-bm")
    assert manifest.version == "9.9.9-test" and manifest.domain_guard == load_bundle(BASE).manifest.domain_guard


def test_a_reviewed_folder_the_bundle_does_not_know_is_refused(tmp_path):
    (tmp_path / "megakaryocyte").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a class"):
        finetune.read_reviewed([tmp_path], load_bundle(BASE).class_names)
