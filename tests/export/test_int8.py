"""INT8 graphs for the CPU (issue 18): quantised, checked against FP32, admitted into the bundle
only when they agree, and run as `engine.int8` with the verification every non-FP32 engine gets.

Calibration data here is the bundled blood cells and fields (the real build uses the held-back
validation split: build_engines.int8's docstring); the result's accuracy is not the point."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

pytest.importorskip("onnx", reason="quantisation needs onnx (the train or gpu extras)")

from build_engines.int8 import CLASSIFIER_INT8, DETECTOR_INT8, build_int8
from edge.analysis.field_models import build_field_model, needs_verification, onnxruntime_model
from edge.capture.replay import verification_fields
from edge.config import AnalysisConfig, AppConfig, OnnxRuntimeEngine
from edge.engines.bundle import load_bundle
from edge.errors import BundleError
from tests.cli_helpers import ROOT

FIELDS = ROOT / "samples" / "fields"  # blood fields: the lite-pbc bundle's own kind


def _crops(folder, out):
    """val.npz / test.npz as training.fitting.marrow crops writes them, from the bundled blood cells."""
    paths = sorted((ROOT / "samples" / "cells").glob("*.jpg"))
    images = np.stack([cv2.resize(cv2.imread(str(p))[..., ::-1], (184, 184)) for p in paths])
    codes = np.array([p.name.split("_")[0] for p in paths])
    out.mkdir()
    for split in ("val", "test"):
        np.savez(out / f"{split}.npz", images=images, codes=codes, sets=np.array(["pbc_cells"] * len(paths)),
                 paths=np.array([p.name for p in paths]))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    bundle = tmp / "lite-pbc"
    shutil.copytree(ROOT / "models" / "lite-pbc", bundle)
    crops = _crops(ROOT / "samples" / "cells", tmp / "crops")
    # tolerances opened so the admission path is what is tested (the refusal has its own test)
    manifest = load_bundle(bundle).manifest
    lenient = manifest.verification.model_copy(
        update={"min_detection_agreement": 0.0, "min_class_agreement": 0.0, "max_probability_diff": 1.0}
    )
    from edge.engines.bundle import write_manifest

    write_manifest(bundle, manifest.model_copy(update={"verification": lenient}))
    result = build_int8(bundle, crops, FIELDS, calibration_count=21, held_back_cells=21, verify_fields=FIELDS)
    return bundle, crops, result


def test_admitted_int8_graphs_are_in_the_bundle_and_run(built):
    bundle_dir, _, result = built
    assert result["passed"], result["failures"]
    bundle = load_bundle(bundle_dir)  # every file, the INT8 ones too, against its sha256
    assert bundle.manifest.int8.detector == DETECTOR_INT8 and bundle.manifest.int8.classifier == CLASSIFIER_INT8
    assert {DETECTOR_INT8, CLASSIFIER_INT8} <= set(bundle.manifest.files)
    held = bundle.manifest.int8.verification["held_back_cells"]
    assert 0 < held["cells"] <= 21 and {"fp32_macro_f1", "int8_macro_f1", "class_agreement"} <= set(held)
    import onnx

    graph = onnx.load(str(bundle_dir / CLASSIFIER_INT8))
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)  # really quantised
    config = AppConfig(bundle=bundle_dir, engine={"type": "onnxruntime", "int8": True, "verify_fields": FIELDS})
    assert needs_verification(config)
    model, report = build_field_model(bundle, config, verification_fields(config.engine.verify_fields))
    assert model.name == "onnxruntime-int8" and report is not None and report.passed
    assert result["sample_fields"]["cells"] > 0  # the check compared real cells


def test_a_failing_int8_build_is_refused_and_leaves_the_bundle_as_it_was(built, tmp_path, monkeypatch):
    source, crops, _ = built
    bundle_dir = tmp_path / "b"
    shutil.copytree(source, bundle_dir)
    manifest = load_bundle(bundle_dir).manifest
    from edge.engines.bundle import write_manifest

    strict = manifest.verification.model_copy(update={"max_probability_diff": 1e-7})  # INT8 never gets there
    bare = manifest.model_copy(update={"verification": strict, "int8": None, "files": {
        k: v for k, v in manifest.files.items() if k not in (DETECTOR_INT8, CLASSIFIER_INT8)}})  # fmt: skip
    for name in (DETECTOR_INT8, CLASSIFIER_INT8):
        (bundle_dir / name).unlink()
    write_manifest(bundle_dir, bare)
    before = (bundle_dir / "bundle.json").read_bytes()
    result = build_int8(bundle_dir, crops, FIELDS, calibration_count=21, held_back_cells=21, verify_fields=FIELDS)
    assert not result["passed"] and any("probability" in f for f in result["failures"])
    assert (bundle_dir / "bundle.json").read_bytes() == before
    assert not (bundle_dir / DETECTOR_INT8).exists() and not (bundle_dir / CLASSIFIER_INT8).exists()


def test_asking_for_int8_graphs_a_bundle_lacks_is_a_clear_error():
    with pytest.raises(BundleError, match=r"no INT8 graphs.*build_engines\.int8"):
        onnxruntime_model(load_bundle(ROOT / "models" / "lite-pbc"), AnalysisConfig(), OnnxRuntimeEngine(int8=True))
