"""The shipped marrow bundle on real data it never trained on (needs ../shared/data; skips without).

Floors here sit below the figures in models/marrow-bm/README.md: they catch a bundle or a crop
path that collapses, they do not restate the measurement."""

import json

import pytest

from edge.engines.bundle import load_bundle
from tests.cli_helpers import marrow_edge

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def marrow(bundle_dir):
    bundle = load_bundle(bundle_dir)
    if bundle.manifest.domain_guard is None or "blast" not in bundle.class_names:
        pytest.skip(f"the shipped bundle {bundle.manifest.name} is not a marrow bundle with a guard")
    return bundle


def test_the_guard_trips_on_another_lab_and_not_on_held_back_cells(marrow, shared_data):
    if not (shared_data / "zheng2018_wbc").is_dir() or not (shared_data / "matek_bm").is_dir():
        pytest.skip("zheng2018_wbc or matek_bm missing from the shared data")
    from training.bundle.guard import measure

    rates = measure(marrow, shared_data, cells=50, slides=40)
    print(json.dumps(rates))
    assert rates["zheng2018 dataset1"]["tripped"] >= 0.9
    assert rates["matek_bm test"]["tripped"] <= 0.05
    assert rates["pbc_cells test"]["tripped"] <= 0.05


def test_validate_slides_sees_the_blasts_it_was_given(marrow, shared_data, bundle_dir):
    if not (shared_data / "matek_bm").is_dir():
        pytest.skip("matek_bm missing from the shared data")
    proc = marrow_edge(
        "validate-slides", "--bundle", str(bundle_dir), "--data", str(shared_data),
        "--shares", "0,50", "--repeats", "1", "--cells", "80",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "%" in line.split("|")[1]]
    measured = [float(r.split("|")[4].split("%")[0]) for r in rows]
    assert len(measured) == 2 and measured[1] >= measured[0] + 15  # 50% composed reads far above 0%
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["slides"] == 2


def test_evaluate_cells_groups_another_labs_folders(marrow, shared_data, bundle_dir):
    folder = shared_data / "zheng2018_wbc" / "dataset2"
    if not folder.is_dir():
        pytest.skip("zheng2018_wbc missing from the shared data")
    proc = marrow_edge("evaluate", "cells", "--bundle", str(bundle_dir), str(folder), "--groups")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["n"] == 100 and set(report["per_group"]) == {
        "neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"
    }  # fmt: skip
    assert report["grouped_accuracy"] >= 0.35  # lite-pbc, blood only: 0.45 by the issue; collapse would be < 0.2
