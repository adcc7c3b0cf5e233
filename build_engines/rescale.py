"""Re-export a bundle's detector to run at the size it is given, and record the scale it learned.

A bundle exported before issue 46 carries a detector graph with torchvision's resize inside: any
input is fitted to ``input_min_size`` again, so a tile at the trained scale would be shrunk or
blown up inside the graph. The same weights exported with ``DetectorGraph(resize=False)`` run at
the input's own size; on fields already fitted (what the old graph saw at scale 1) both graphs
must agree, and the new graph must match PyTorch at other sizes too. Only then is the file
replaced and the manifest given the scale and the new version.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path

import cv2
import numpy as np
from pydantic import ValidationError

from build_engines.export import _check_detector, _export, _parity_fields
from edge.config import DEFAULT_SAMPLES
from edge.engines.bundle import BundleManifest, ScaleSpec, file_entry, load_bundle, write_manifest
from edge.engines.graphs import DetectorGraph, load_graphs
from edge.engines.onnxruntime import OnnxRuntimeBackend
from edge.errors import BundleError

log = logging.getLogger(__name__)
AGREEMENT = 1e-3  # scores and px: the old graph's resize at scale 1 is the identity, up to float rounding


def _other_sizes(fields: list[np.ndarray]) -> list[np.ndarray]:
    """Inputs the fitting graph never got: tiles and small fields at other sizes."""
    return [np.ascontiguousarray(cv2.resize(fields[0], (w, h))) for h, w in ((640, 640), (300, 212), (517, 333))]


def reexport_detector(bundle_dir: Path, fields_dir: Path = DEFAULT_SAMPLES) -> Path:
    """The bundle's detector from its own PyTorch weights, running at the size it is given; the
    manifest says so (``graph_resizes: false``). Nothing changes unless every check passes."""
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    if manifest.torch_weights is None:
        raise BundleError(f"bundle {manifest.name} carries no PyTorch weights: its detector cannot be re-exported")
    det = manifest.detector
    graph, _, _ = load_graphs(
        manifest.profile, len(manifest.classes), tuple(det.labels), bundle.root / manifest.torch_weights,
        require_all=True, stage2=tuple(manifest.classifier.stage2), stage1=manifest.classifier.stage1,
    )  # fmt: skip
    as_given = DetectorGraph(graph.detector, resize=False).eval()
    rng = np.random.default_rng(0)
    samples = sorted(fields_dir.glob("*.jpg"))[:4]
    fitted = _parity_fields(samples, rng, det.input_min_size or 384, det.input_max_size or 640)
    old = OnnxRuntimeBackend(bundle.path(det.file))
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / det.file
        import torch

        example = torch.from_numpy(fitted[0][None])
        axes = {"images": {1: "height", 2: "width"}, "boxes": {0: "anchors"}, "scores": {0: "anchors"}}
        _export(as_given, example, candidate, ["boxes", "scores"], axes)
        score_diff, box_diff = _check_detector(as_given, candidate, fitted + _other_sizes(fitted))
        new = OnnxRuntimeBackend(candidate)
        for image in fitted:
            a, b = old.run({"images": image[None]}), new.run({"images": image[None]})
            worst = max(float(np.abs(a[k] - b[k]).max()) for k in ("boxes", "scores"))
            if worst > AGREEMENT:
                raise BundleError(f"the re-exported detector differs from the bundle's on a fitted field by {worst}")
        candidate.replace(bundle.path(det.file))
    spec = det.model_copy(
        update={
            "graph_resizes": False,
            "normalisation": f"the appliance brings a field to the bundle's scale (unknown camera scale: short "
            f"side {det.input_min_size} px), in tiles of at most {det.input_max_size} px; inside the graph: x/255, "
            "ImageNet mean/std, no resize",
        }
    )
    provenance = dict(manifest.provenance)
    provenance["rescaled"] = {
        "from_version": manifest.version,
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "what": "detector re-exported from the same weights to run at the size it is given (issue 46)",
        "parity": f"PyTorch vs ONNX Runtime: scores {score_diff:.2e}, boxes {box_diff:.3f} px over "
        f"{len(fitted)} fitted fields and 3 other sizes; old vs new graph on fitted fields within {AGREEMENT}",
    }
    files = dict(manifest.files) | {det.file: file_entry(bundle.path(det.file))}
    updated = manifest.model_copy(update={"detector": spec, "files": files, "provenance": provenance})
    write_manifest(bundle_dir, updated)
    load_bundle(bundle_dir)  # validates the manifest and the new hashes
    log.info("%s: detector re-exported to run at the size it is given", manifest.name)
    return bundle_dir


def _checked(manifest: BundleManifest, update: dict) -> BundleManifest:
    """The updated manifest, validated before anything is written (a scale beside a refitting graph is refused)."""
    try:
        return BundleManifest.model_validate(manifest.model_copy(update=update).model_dump())
    except ValidationError as exc:
        raise BundleError(f"bundle {manifest.name} not changed: {exc.errors()[0]['msg']}") from None


def record_scale(bundle_dir: Path, scale: ScaleSpec, version: str) -> Path:
    """Write ``scale`` into the manifest of a bundle whose detector runs as given, as ``version``."""
    manifest = load_bundle(bundle_dir).manifest
    write_manifest(bundle_dir, _checked(manifest, {"scale": scale, "version": version}))
    log.info("%s %s: scale %.4f um/px recorded", manifest.name, version, scale.um_per_px)
    return bundle_dir


def record_margin(bundle_dir: Path, margin: float, how: dict, version: str) -> Path:
    """The count path's crop margin (``classifier.field_crop_margin``) and how it was chosen, as ``version``."""
    manifest = load_bundle(bundle_dir).manifest
    classifier = manifest.classifier.model_copy(update={"field_crop_margin": margin})
    provenance = dict(manifest.provenance) | {"field_crop_margin": how}
    write_manifest(
        bundle_dir, _checked(manifest, {"classifier": classifier, "provenance": provenance, "version": version})
    )
    log.info("%s %s: count-path crop margin %.2f recorded", manifest.name, version, margin)
    return bundle_dir
