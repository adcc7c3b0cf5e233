"""Export a model bundle: detector + fused classifier to ONNX, parity-checked, hashed.

Uses the legacy TorchScript exporter at opset 17: it exports torchvision's RetinaNet with its
NMS (ONNX NonMaxSuppression) and matches PyTorch (see shared/ENVIRONMENT.md), where the
dynamo exporter stops at batched_nms' data-dependent branches.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from build_engines.classes import PAPER_CLASSES
from edge import __version__
from edge.analysis.detect import fit_field
from edge.capture.decode import decode_image
from edge.engines.bundle import (
    BundleManifest,
    ClassifierSpec,
    ClassSpec,
    DetectorSpec,
    FileEntry,
    Parity,
    TensorSpec,
    file_entry,
    load_bundle,
    write_manifest,
)
from edge.engines.graph_check import check_for_tensorrt
from edge.engines.graphs import PROFILES, DetectorGraph, FusedClassifier, load_graphs, weight_files
from edge.engines.onnxruntime import OnnxRuntimeBackend
from edge.errors import BundleError

log = logging.getLogger(__name__)

OPSET = 17
TORCH_DIR = "torch"
DETECTOR_FILE = "detector.onnx"
CLASSIFIER_FILE = "classifier.onnx"
CLASSIFIER_TOLERANCE = 1e-4  # probabilities
SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE_PX = 0.05


@dataclass
class ExportRequest:
    out_dir: Path
    profile: str = "lite"
    name: str = "lite-untrained"
    version: str = "0.0.0"
    classes: list[ClassSpec] = field(default_factory=lambda: list(PAPER_CLASSES))
    detector_labels: tuple[str, ...] = ("wbc",)
    cell_labels: tuple[str, ...] | None = None  # None: every detector label is a cell
    weights_dir: Path | None = None  # detector.pt, stage1.pt, stage2_0.pt ... (state dicts)
    score_threshold: float = 0.5
    nms_iou: float = 0.5
    max_detections: int = 100
    countable_threshold: float = 0.5
    crop_margin: float = 0.15
    parity_images: Sequence[Path] = ()
    provenance: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    include_torch_weights: bool = True  # copy the state dicts into the bundle for the PyTorch backends


def build_models(request: ExportRequest, require_all: bool = False) -> tuple[DetectorGraph, FusedClassifier, bool]:
    """The two graphs to export, and whether any weights were loaded (False: untrained)."""
    return load_graphs(
        request.profile,
        len(request.classes),
        request.detector_labels,
        request.weights_dir,
        require_all=require_all,
        seed=request.seed,
    )


def _export(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str], axes: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about data-dependent shapes are expected
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=outputs,
            dynamic_axes=axes,
        )


def _parity_fields(paths: Sequence[Path], rng: np.random.Generator, min_size: int, max_size: int) -> list[np.ndarray]:
    """The fields as the appliance hands them to the graph (already fitted to the input size)."""
    fields = [decode_image(p.read_bytes(), str(p)) for p in paths]
    if not fields:
        fields = [rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)]
    return [fit_field(f, min_size, max_size)[0] for f in fields]


def _check_detector(graph: DetectorGraph, path: Path, fields: list[np.ndarray]) -> tuple[float, float]:
    """Worst score and box (px) difference between PyTorch and ONNX Runtime over every anchor."""
    backend = OnnxRuntimeBackend(path)
    worst_score = worst_box = 0.0
    for image in fields:
        batch = image[None]
        with torch.no_grad():
            t_boxes, t_scores = (x.numpy() for x in graph(torch.from_numpy(batch)))
        out = backend.run({"images": batch})
        if out["boxes"].shape != t_boxes.shape or out["scores"].shape != t_scores.shape:
            raise BundleError(
                f"detector parity: ONNX Runtime shapes {out['boxes'].shape}/{out['scores'].shape} "
                f"differ from PyTorch {t_boxes.shape}/{t_scores.shape}"
            )
        worst_score = max(worst_score, float(np.abs(out["scores"] - t_scores).max()))
        worst_box = max(worst_box, float(np.abs(out["boxes"] - t_boxes).max()))
    if worst_score > SCORE_TOLERANCE or worst_box > BOX_TOLERANCE_PX:
        raise BundleError(
            f"detector parity failed: scores differ by {worst_score:.2e} (tolerance {SCORE_TOLERANCE}), "
            f"boxes by {worst_box:.3f} px (tolerance {BOX_TOLERANCE_PX})"
        )
    return worst_score, worst_box


def _check_classifier(graph: FusedClassifier, path: Path, crops: np.ndarray) -> float:
    backend = OnnxRuntimeBackend(path)
    with torch.no_grad():
        t_countable, t_probs = (x.numpy() for x in graph(torch.from_numpy(crops)))
    out = backend.run({"images": crops})
    diff = float(max(np.abs(out["countable"] - t_countable).max(), np.abs(out["probs"] - t_probs).max()))
    if diff > CLASSIFIER_TOLERANCE:
        raise BundleError(f"classifier parity failed: max abs difference {diff:.2e} > {CLASSIFIER_TOLERANCE}")
    return diff


def export_bundle(request: ExportRequest) -> Path:
    """Write a complete, verified bundle to ``request.out_dir`` (replaced only when all checks pass)."""
    profile = PROFILES[request.profile]
    detector, classifier, trained = build_models(request)
    rng = np.random.default_rng(request.seed)
    fields = _parity_fields(request.parity_images, rng, profile.detector_min_size, profile.detector_max_size)
    crop = profile.crop_size
    request.out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=request.out_dir.parent))
    try:
        log.info("exporting detector (%s)", profile.detector)
        _export(
            detector,
            torch.from_numpy(fields[0][None]),
            staging / DETECTOR_FILE,
            ["boxes", "scores"],
            {"images": {1: "height", 2: "width"}, "boxes": {0: "anchors"}, "scores": {0: "anchors"}},
        )
        log.info("exporting fused classifier (stage 1 %s, stage 2 %s)", profile.stage1, ", ".join(profile.stage2))
        example = torch.from_numpy(rng.integers(0, 256, size=(2, crop, crop, 3), dtype=np.uint8))
        _export(
            classifier,
            example,
            staging / CLASSIFIER_FILE,
            ["countable", "probs"],
            {"images": {0: "batch"}, "countable": {0: "batch"}, "probs": {0: "batch"}},
        )
        problems = check_for_tensorrt(staging / DETECTOR_FILE) + check_for_tensorrt(staging / CLASSIFIER_FILE)
        if problems:  # every backend must take the bundle, TensorRT's parser included
            raise BundleError("; ".join(problems))
        log.info("parity check against PyTorch")
        score_diff, box_diff = _check_detector(detector, staging / DETECTOR_FILE, fields)
        crops = rng.integers(0, 256, size=(3, crop, crop, 3), dtype=np.uint8)
        cls_diff = _check_classifier(classifier, staging / CLASSIFIER_FILE, crops)
        parity = [
            Parity(
                model=DETECTOR_FILE,
                output="scores",
                max_abs_diff=score_diff,
                tolerance=SCORE_TOLERANCE,
                inputs=f"{len(fields)} field(s)",
            ),
            Parity(
                model=DETECTOR_FILE,
                output="boxes (px)",
                max_abs_diff=box_diff,
                tolerance=BOX_TOLERANCE_PX,
                inputs=f"{len(fields)} field(s)",
            ),
            Parity(
                model=CLASSIFIER_FILE,
                output="countable, probs",
                max_abs_diff=cls_diff,
                tolerance=CLASSIFIER_TOLERANCE,
                inputs=f"3 random uint8 crops {crop}x{crop}; countable and probs",
            ),
        ]
        files = {
            DETECTOR_FILE: file_entry(staging / DETECTOR_FILE),
            CLASSIFIER_FILE: file_entry(staging / CLASSIFIER_FILE),
        }
        torch_weights = None
        if trained and request.include_torch_weights and request.weights_dir is not None:
            torch_weights = TORCH_DIR
            files.update(_copy_weights(request.weights_dir, staging, profile.name))
        manifest = BundleManifest(
            name=request.name,
            version=request.version,
            profile=profile.name,
            untrained=not trained,
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            classes=request.classes,
            detector=DetectorSpec(
                file=DETECTOR_FILE,
                opset=OPSET,
                architecture=profile.detector,
                inputs=[TensorSpec(name="images", dtype="uint8", shape=[1, "height", "width", 3])],
                outputs=[
                    TensorSpec(name="boxes", dtype="float32", shape=["anchors", 4]),
                    TensorSpec(name="scores", dtype="float32", shape=["anchors", len(request.detector_labels)]),
                ],
                normalisation=f"the appliance fits a field to short side {profile.detector_min_size} px "
                f"(long side at most {profile.detector_max_size}); inside the graph: x/255, ImageNet mean/std",
                labels=list(request.detector_labels),
                cell_labels=list(request.cell_labels or request.detector_labels),
                score_threshold=request.score_threshold,
                nms_iou=request.nms_iou,
                max_detections=request.max_detections,
                input_min_size=profile.detector_min_size,
                input_max_size=profile.detector_max_size,
            ),
            classifier=ClassifierSpec(
                file=CLASSIFIER_FILE,
                opset=OPSET,
                architecture=f"fused: stage1 {profile.stage1} + stage2 mean softmax of " + ", ".join(profile.stage2),
                inputs=[TensorSpec(name="images", dtype="uint8", shape=["batch", crop, crop, 3])],
                outputs=[
                    TensorSpec(name="countable", dtype="float32", shape=["batch"]),
                    TensorSpec(name="probs", dtype="float32", shape=["batch", len(request.classes)]),
                ],
                crop_size=crop,
                crop_margin=request.crop_margin,
                countable_threshold=request.countable_threshold,
                stage1=profile.stage1,
                stage2=list(profile.stage2),
            ),
            files=files,
            torch_weights=torch_weights,
            parity=parity,
            provenance={
                "weights": str(request.weights_dir) if trained else "random initialisation (untrained)",
                "exported_by": f"marrow-edge {__version__}",
                "torch": torch.__version__,
                "python": platform.python_version(),
                "seed": request.seed,
                **request.provenance,
            },
        )
        write_manifest(staging, manifest)
        load_bundle(staging)  # the same check the appliance does
        if request.out_dir.exists():
            shutil.rmtree(request.out_dir)
        request.out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is read by the service user
        shutil.move(str(staging), request.out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "bundle written to %s (parity: detector scores %.2e, boxes %.3f px; classifier %.2e)",
        request.out_dir,
        score_diff,
        box_diff,
        cls_diff,
    )
    return request.out_dir


def _copy_weights(weights_dir: Path, bundle_dir: Path, profile: str) -> dict[str, FileEntry]:
    """Copy the profile's state dicts into ``bundle_dir/torch``; their manifest entries."""
    (bundle_dir / TORCH_DIR).mkdir(exist_ok=True)
    entries = {}
    for name in weight_files(profile):
        source = weights_dir / name
        if not source.is_file():
            raise BundleError(f"{source} is missing: a bundle carries all of its models' weights or none")
        shutil.copyfile(source, bundle_dir / TORCH_DIR / name)
        entries[f"{TORCH_DIR}/{name}"] = file_entry(bundle_dir / TORCH_DIR / name)
    return entries


def attach_torch_weights(bundle_dir: Path, weights_dir: Path, parity_images: Sequence[Path] = ()) -> Path:
    """Add the PyTorch state dicts a bundle was exported from, after checking they reproduce its ONNX files.

    For bundles exported before bundles carried them. The same parity check as export: every
    anchor's score and box, and the classifier on random crops; a mismatch adds nothing.
    """
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    profile = PROFILES[manifest.profile]
    request = ExportRequest(
        out_dir=bundle_dir,
        profile=manifest.profile,
        classes=list(manifest.classes),
        detector_labels=tuple(manifest.detector.labels),
        weights_dir=weights_dir,
    )
    detector, classifier, _ = build_models(request, require_all=True)
    rng = np.random.default_rng(0)
    fields = _parity_fields(parity_images, rng, profile.detector_min_size, profile.detector_max_size)
    score_diff, box_diff = _check_detector(detector, bundle.path(manifest.detector.file), fields)
    crops = rng.integers(0, 256, size=(3, profile.crop_size, profile.crop_size, 3), dtype=np.uint8)
    cls_diff = _check_classifier(classifier, bundle.path(manifest.classifier.file), crops)
    entries = _copy_weights(weights_dir, bundle_dir, profile.name)
    parity = [p for p in manifest.parity if p.model != TORCH_DIR]
    parity.append(
        Parity(
            model=TORCH_DIR,
            output=f"detector scores {score_diff:.2e}, boxes {box_diff:.3f} px; classifier {cls_diff:.2e}",
            max_abs_diff=max(score_diff, cls_diff),
            tolerance=SCORE_TOLERANCE,
            inputs=f"{len(fields)} field(s), 3 random crops; weights reproduce the bundle's ONNX files",
        )
    )
    updated = manifest.model_copy(
        update={"files": {**manifest.files, **entries}, "torch_weights": TORCH_DIR, "parity": parity}
    )
    write_manifest(bundle_dir, updated)
    load_bundle(bundle_dir)
    log.info("attached PyTorch weights to %s (parity %.2e, %.3f px, %.2e)", bundle_dir, score_diff, box_diff, cls_diff)
    return bundle_dir


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Attach PyTorch weights to an exported bundle (parity-checked).")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("weights", type=Path, help="folder with detector.pt, stage1.pt, stage2_<i>.pt")
    parser.add_argument("--parity-images", type=Path, nargs="*", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    attach_torch_weights(args.bundle, args.weights, args.parity_images)


if __name__ == "__main__":
    main()
