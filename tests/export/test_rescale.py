"""A bundle made before scales were recorded, its detector re-exported to run at the size it is given
(build_engines.rescale, issue 46): the same detections on fitted fields, the old graph's refit gone."""

import shutil

import numpy as np
import pytest

pytest.importorskip("torch", reason="re-exporting needs the train extra (torch)")

from build_engines.rescale import record_scale, reexport_detector
from edge.analysis.detect import fit_field
from edge.capture.replay import verification_fields
from edge.engines.bundle import ScaleSpec, load_bundle
from edge.engines.onnxruntime import OnnxRuntimeBackend
from edge.errors import BundleError
from tests.conftest import ROOT

SCALE = ScaleSpec(
    um_per_px=0.09, range_um_per_px=(0.08, 0.2), cell_side_px_p10=60, cell_side_px_median=100, cell_side_px_p90=140,
    cell_side_px_max=170, cells=10, how="test",
)  # fmt: skip


def test_a_fitting_detector_is_re_exported_to_run_as_given(tmp_path):
    bundle_dir = tmp_path / "lite-pbc"
    shutil.copytree(ROOT / "models" / "lite-pbc", bundle_dir)
    before = load_bundle(bundle_dir)
    assert before.manifest.detector.graph_resizes
    with pytest.raises(BundleError, match="graph_resizes"):  # a scale beside a graph that refits is refused
        record_scale(bundle_dir, SCALE, "9.9.9")
    old = OnnxRuntimeBackend(before.path("detector.onnx"))
    reexport_detector(bundle_dir, ROOT / "samples" / "fields")
    after = load_bundle(bundle_dir)  # hashes verified
    assert not after.manifest.detector.graph_resizes and "rescaled" in after.manifest.provenance
    new = OnnxRuntimeBackend(after.path("detector.onnx"))
    det = after.manifest.detector
    field = verification_fields(ROOT / "samples" / "fields")[0]
    fitted = fit_field(field, det.input_min_size, det.input_max_size)[0][None]
    a, b = old.run({"images": fitted}), new.run({"images": fitted})
    assert np.abs(a["scores"] - b["scores"]).max() < 1e-3 and np.abs(a["boxes"] - b["boxes"]).max() < 1e-2
    # a tile twice the fitted size: the old graph shrinks it back to 384 px, the new one sees it as it is
    large = np.ascontiguousarray(np.repeat(np.repeat(fitted[0], 2, axis=0), 2, axis=1))[None]
    assert new.run({"images": large})["boxes"].shape[0] > 3 * old.run({"images": large})["boxes"].shape[0]
    record_scale(bundle_dir, SCALE, "9.9.9")
    assert load_bundle(bundle_dir).manifest.scale == SCALE and load_bundle(bundle_dir).manifest.version == "9.9.9"
