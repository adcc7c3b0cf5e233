"""The box knows its microscope's scale (issue 46), through the command line on real held-back cells:
calibrate-scale finds a known scale and writes it; a large field is counted at the bundle's scale
where fitting it loses its cells; fields without cells are refused with the reason."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import load_config
from tests.cli_helpers import error_lines, marrow_edge
from tests.conftest import ROOT

pytest.importorskip("training.data.grids", reason="the grids are composed with the training package")


def _grids(shared_data: Path, out: Path, n: int, count: int, optical: float, seed: int = 0) -> Path:
    from training.data.grids import grid_field, load_cells

    cells = load_cells(shared_data)
    order = np.random.default_rng(seed).permutation(len(cells))
    out.mkdir()
    for k in range(count):
        image, _, _ = grid_field([cells[i] for i in order[k * n * n : (k + 1) * n * n]], n, optical)
        cv2.imwrite(str(out / f"field_{k:02d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return out


def _matek_um_per_px() -> float:
    import json

    manifest = json.loads((ROOT / "models" / "marrow-bm" / "bundle.json").read_text())
    return manifest["scale"]["choice"]["matek_um_per_px"]


def test_calibrate_scale_finds_a_known_scale_and_writes_it_into_the_config(shared_data, tmp_path):
    optical = 0.6  # a coarser camera than the bundle's: the same cells in 0.6x the pixels
    fields = _grids(shared_data, tmp_path / "fields", 4, 8, optical)
    config = tmp_path / "config.yaml"
    config.write_text("device_id: bench-scope  # the lab's own note\nanalysis:\n  max_batch: 16\n")
    proc = marrow_edge("calibrate-scale", "--source", str(fields), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    truth = _matek_um_per_px() / optical
    written = load_config(config, environ={}).analysis.um_per_px
    assert written == pytest.approx(truth, rel=0.10), proc.stdout
    low, high = (float(v) for v in re.search(r"95% interval ([\d.]+)-([\d.]+)", proc.stdout).groups())
    assert low <= written <= high
    assert "# the lab's own note" in config.read_text() and "max_batch: 16" in config.read_text()


def test_fields_without_cells_are_refused_with_the_reason(tmp_path):
    fields = tmp_path / "smear-without-cells"
    fields.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):  # a pale, grainy ground: a field, but no cell in it
        cv2.imwrite(str(fields / f"empty_{k}.png"), rng.integers(215, 240, size=(600, 800, 3), dtype=np.uint8))
    proc = marrow_edge("calibrate-scale", "--source", str(fields))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot be told" in error_lines(proc)[0] and "--um-per-px" in error_lines(proc)[0]
    (fields / "empty_0.png").write_bytes(b"not an image")
    (fields / "empty_1.png").unlink()
    proc = marrow_edge("calibrate-scale", "--source", str(fields))
    assert proc.returncode == 2 and "no usable field" in error_lines(proc)[0]


def test_a_large_field_is_counted_at_the_bundles_scale_where_fitting_loses_its_cells(shared_data, tmp_path):
    fields = _grids(shared_data, tmp_path / "large", 6, 1, 1.0, seed=3)  # 36 cells in 1500x1500 px
    fitted = marrow_edge("run", "--source", str(fields), "--quiet")
    scaled = marrow_edge("run", "--source", str(fields), "--quiet", "--um-per-px", str(_matek_um_per_px()))
    assert scaled.returncode == 0, scaled.stderr

    def counted(proc) -> int:
        found = re.search(r"(\d+) counted, \d+ not countable", proc.stdout)
        return int(found.group(1)) if found else 0

    assert counted(scaled) >= 20 and counted(fitted) <= 5, (fitted.stdout, scaled.stdout)
    assert f"scale: {_matek_um_per_px():.4f} um/px" in scaled.stdout
    assert "scale: not set" in fitted.stdout or fitted.returncode == 5
