"""The benchmark suite through its command line: a short run keeps it from rotting."""

import json

import pytest

pytest.importorskip("torch", reason="the benchmark's baseline is PyTorch (the train extra)")

from benchmarks import pipeline
from benchmarks.fields import compose_field


def test_composed_fields_hold_the_cells_asked_for():
    image, boxes = compose_field(60, 1440, 1920, seed=1)
    assert image.shape == (1440, 1920, 3) and boxes.shape == (60, 4)
    assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes[:, 2].max() <= 1920
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    gaps = [min(abs(a - b).max() for j, b in enumerate(centres) if j != i) for i, a in enumerate(centres)]
    assert min(gaps) > 60  # no two cells on the same spot
    again, _ = compose_field(60, 1440, 1920, seed=1)
    assert (again == image).all()


def test_pipeline_benchmark_smoke(tmp_path):
    report = pipeline.main(
        [
            "--profiles", "lite", "--cells", "1", "3", "--repeats", "1", "--variants", "1",
            "--frame", "640x480", "--backends", "onnxruntime-cpu", pipeline.BASELINE,
            "--tag", "test", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    lite = report["profiles"]["lite"]
    assert set(lite["backends"]) == {"onnxruntime-cpu", pipeline.BASELINE}
    for runs in lite["backends"].values():
        assert set(runs) == {1, 3}
        assert runs[3]["fields"] == 1 and runs[3]["field_ms"]["p50"] > 0 and runs[3]["classify_floor_ms"] > 0
    assert lite["flops"]["classifier_per_cell"] > 1e8  # the three members and the countable head
    assert lite["verification"][pipeline.BASELINE]["passed"] is True
    written = json.loads((tmp_path / f"pipeline-test-{report['date'][:10]}.json").read_text())
    assert written["peak"]["tflops"] > 0 and written["machine"]["logical_cores"] >= 1
    table = (tmp_path / f"pipeline-test-{report['date'][:10]}.md").read_text()
    assert table.count("| onnxruntime-cpu |") == 2 and "x baseline" in table


def test_scale_benchmark_smoke(tmp_path):
    from benchmarks import scale

    report = scale.main(["--fields", "1", "--cells", "3", "--out", str(tmp_path), "--tag", "test"])
    rows = {r["variant"]: r for r in report["rows"]}
    assert rows["fitted (before)"]["tiles"] == 1 and rows["fitted (before)"]["detector_input"] == [384, 459]
    assert rows["scaled, tiles of 640 px"]["tiles"] > rows["scaled, tiles of 1024 px"]["tiles"] > 1
    assert rows["scaled, tiles of 2048 px"]["tiles"] == 1 and all(r["fields_per_s"] > 0 for r in rows.values())
    assert (tmp_path / f"scale-test-onnxruntime-{report['date'][:10]}.md").read_text().count("| scaled") == 3
