"""Benchmarks run through the public API; this smoke run keeps them from rotting."""

import json
import shutil

from benchmarks import field_cpu


def test_field_benchmark_smoke(samples, tmp_path):
    fields = tmp_path / "fields"
    fields.mkdir()
    shutil.copy(sorted(samples.glob("*.jpg"))[0], fields / "a.jpg")
    report = field_cpu.main(["--fields", str(fields), "--repeats", "1", "--out", str(tmp_path / "out")])
    run = report["runs"]["onnxruntime-cpu"]
    assert run["fields"] == 1 and run["cells"] >= 0 and run["wall_ms"]["p50"] > 0
    written = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert len(written["bundle"]["hash"]) == 12 and written["machine"]["logical_cores"] >= 1
    assert next((tmp_path / "out").glob("*.md")).read_text().count("| onnxruntime-cpu |") == 1
