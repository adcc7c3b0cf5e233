"""INT8 graphs for ONNX Runtime on the CPU (issue 18): static quantisation (QDQ, per-channel
weights) of the detector and the fused classifier, calibrated on held-back training data, and
admitted into the bundle only when they agree with FP32.

    python -m build_engines.int8 --bundle models/marrow-bm --crops /work/exp/crops \\
        --fields ../shared/data/txl_pbc_detection/images/val

Calibration: the classifier on validation crops (``CROPS/val.npz`` from ``training.fitting.marrow crops``:
cells held back from training, never the test split), the detector on validation fields. The
check, as the appliance's own at start (``engine.int8`` is verified on ``verify_fields`` like any
engine but FP32): the whole field model against FP32 on the bundled sample fields with the
bundle's tolerances, and the classes on held-back cells (``CROPS/test.npz``) agreeing at least
``verification.min_class_agreement``. A build that fails is refused: nothing is written and the
exit status is 1. Accuracy on the test crops is measured for FP32 and INT8 side by side and kept
in ``bundle.json`` (``int8.verification``).

Needs onnx (the train or gpu extras); the box only needs ONNX Runtime to run the result.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import cv2
import numpy as np

from edge.analysis.detect import fit_field
from edge.analysis.field_models import onnxruntime_model
from edge.analysis.verify import compare_models
from edge.capture.replay import open_replay, verification_fields
from edge.config import DEFAULT_SAMPLES, AnalysisConfig, OnnxRuntimeEngine
from edge.engines.bundle import Bundle, Int8Graphs, file_entry, load_bundle, write_manifest
from edge.engines.onnxruntime import OnnxRuntimeBackend

log = logging.getLogger(__name__)

DETECTOR_INT8 = "detector.int8.onnx"
CLASSIFIER_INT8 = "classifier.int8.onnx"
# Ops quantised: the convolutions and matrix products carry nearly all the work; the softmax,
# the ensemble mean and box decoding stay FP32 (probabilities and pixels, as in FP16 builds).
OPS = ["Conv", "MatMul", "Gemm"]


def _resize(crops: np.ndarray, size: int) -> np.ndarray:
    if crops.shape[1] == size:
        return crops
    return np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops])


def calibration_crops(crops_dir: Path, size: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` validation crops, every class represented, at the classifier's input size."""
    data = np.load(crops_dir / "val.npz")
    codes, images = data["codes"], data["images"]
    rng = np.random.default_rng(seed)
    per_code = max(1, count // len(set(codes)))
    chosen = np.concatenate([rng.permutation(np.flatnonzero(codes == c))[:per_code] for c in sorted(set(codes))])
    return _resize(images[chosen], size)


def calibration_fields(folder: Path, bundle: Bundle, count: int) -> list[np.ndarray]:
    """The first ``count`` readable fields of ``folder``, fitted as the detector takes them."""
    det = bundle.manifest.detector
    frames = (f.image for f in open_replay(folder).frames() if f.image is not None)
    fields = [fit_field(image, det.input_min_size, det.input_max_size)[0][None] for image in islice(frames, count)]
    if not fields:
        raise SystemExit(f"no calibration fields in {folder}")
    return fields


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


def quantise(source: Path, target: Path, batches: list[np.ndarray], percentile: bool) -> float:
    """QDQ static quantisation (u8 activations, s8 per-channel weights); seconds taken.

    ``percentile``: activation ranges at the 99.99th percentile (needs batches of one shape: the
    classifier's crops); else min-max (the detector's fields differ in size)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            _Reader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=OPS,
            calibrate_method=CalibrationMethod.Percentile if percentile else CalibrationMethod.MinMax,
            extra_options={"CalibPercentile": 99.99} if percentile else {},
        )
    return time.monotonic() - started


def macro_f1(truth: np.ndarray, predicted: np.ndarray, classes: list[int]) -> float:
    scores = []
    for c in classes:
        tp = int(((predicted == c) & (truth == c)).sum())
        fp = int(((predicted == c) & (truth != c)).sum())
        fn = int(((predicted != c) & (truth == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores))


def held_back(bundle: Bundle, crops_dir: Path, fp32: Path, int8: Path, limit: int) -> dict[str, float]:
    """Classes of FP32 and INT8 on the test crops: agreement, and each one's accuracy against the labels."""
    from training.evaluation.evaluate import folder_to_class

    data = np.load(crops_dir / "test.npz")
    mapping, _ = folder_to_class(bundle, sorted(set(data["codes"].tolist())))
    known = [(i, mapping[code]) for i, code in enumerate(data["codes"].tolist()) if code in mapping]
    rng = np.random.default_rng(1)
    rows = [known[i] for i in rng.permutation(len(known))[:limit]]
    images = _resize(data["images"][[r[0] for r in rows]], bundle.manifest.classifier.crop_size)
    truth = np.array([r[1] for r in rows])
    predictions = {}
    for what, path in (("fp32", fp32), ("int8", int8)):
        backend = OnnxRuntimeBackend(path)
        batches = [images[i : i + 64] for i in range(0, len(images), 64)]
        probs = np.concatenate([backend.run({"images": batch})["probs"] for batch in batches])
        predictions[what] = probs.argmax(1)
    classes = sorted(set(truth.tolist()))
    return {
        "cells": len(rows),
        "class_agreement": float((predictions["fp32"] == predictions["int8"]).mean()),
        "fp32_accuracy": float((predictions["fp32"] == truth).mean()),
        "int8_accuracy": float((predictions["int8"] == truth).mean()),
        "fp32_macro_f1": macro_f1(truth, predictions["fp32"], classes),
        "int8_macro_f1": macro_f1(truth, predictions["int8"], classes),
    }


def build_int8(
    bundle_dir: Path,
    crops_dir: Path,
    fields_dir: Path,
    calibration_count: int = 256,
    held_back_cells: int = 2000,
    verify_fields: Path = DEFAULT_SAMPLES,
) -> dict:
    """Quantise, check, and (only when the check passes) add the INT8 graphs to the bundle."""
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    size = manifest.classifier.crop_size
    crops = calibration_crops(crops_dir, size, calibration_count)
    fields = calibration_fields(fields_dir, bundle, 24)
    with tempfile.TemporaryDirectory(dir=bundle_dir.parent) as tmp:
        staged = {"detector": Path(tmp) / DETECTOR_INT8, "classifier": Path(tmp) / CLASSIFIER_INT8}
        step = min(32, len(crops))
        batches = [crops[i : i + step] for i in range(0, len(crops) - step + 1, step)]  # one shape
        seconds = {
            "detector": quantise(bundle.path(manifest.detector.file), staged["detector"], fields, percentile=False),
            "classifier": quantise(bundle.path(manifest.classifier.file), staged["classifier"], batches,
                                   percentile=True),
        }  # fmt: skip
        cells = held_back(bundle, crops_dir, bundle.path(manifest.classifier.file), staged["classifier"],
                          held_back_cells)  # fmt: skip
        # the appliance's own check, on the field model with the INT8 graphs in place
        for path in staged.values():
            path.replace(bundle_dir / path.name)
        files = dict(manifest.files) | {p.name: file_entry(bundle_dir / p.name) for p in staged.values()}
        candidate = manifest.model_copy(update={"files": files, "int8": Int8Graphs(
            detector=DETECTOR_INT8, classifier=CLASSIFIER_INT8, calibration="", verification={})})  # fmt: skip
        write_manifest(bundle_dir, candidate)
        try:
            model = onnxruntime_model(load_bundle(bundle_dir), AnalysisConfig(), OnnxRuntimeEngine(int8=True))
            reference = onnxruntime_model(load_bundle(bundle_dir), AnalysisConfig(), OnnxRuntimeEngine())
            report = compare_models(model, reference, verification_fields(verify_fields), manifest.verification)
        except Exception:
            _restore(bundle_dir, manifest)
            raise
    failures = list(report.failures)
    if cells["class_agreement"] < manifest.verification.min_class_agreement:
        failures.append(
            f"held-back cells: class agreement {cells['class_agreement']:.3f} "
            f"< {manifest.verification.min_class_agreement}"
        )
    result = {
        "passed": not failures,
        "failures": failures,
        "sample_fields": {
            "fields": report.fields,
            "cells": report.cells_compared,
            "detection_agreement": report.detection_agreement,
            "class_agreement": report.class_agreement,
            "max_probability_diff": report.max_probability_diff,
        },
        "held_back_cells": cells,
        "quantise_seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    if failures:
        _restore(bundle_dir, manifest)
        return result
    calibration = (
        f"classifier: {len(crops)} validation crops of {crops_dir.name} (every class); detector: {len(fields)} "
        f"fields of {fields_dir}; QDQ, u8 activations (classifier: percentile 99.99, detector: min-max), s8 "
        f"per-channel weights, {'/'.join(OPS)}"
    )
    int8 = Int8Graphs(detector=DETECTOR_INT8, classifier=CLASSIFIER_INT8, calibration=calibration, verification=result)
    write_manifest(bundle_dir, candidate.model_copy(update={"int8": int8}))
    load_bundle(bundle_dir)
    return result


def _restore(bundle_dir: Path, manifest: object) -> None:
    """A refused build leaves the bundle as it was."""
    for name in (DETECTOR_INT8, CLASSIFIER_INT8):
        (bundle_dir / name).unlink(missing_ok=True)
    write_manifest(bundle_dir, manifest)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--crops", type=Path, required=True, help="training.marrow crops folder (val.npz, test.npz)")
    parser.add_argument("--fields", type=Path, required=True, help="validation fields for the detector's ranges")
    parser.add_argument("--calibration-crops", type=int, default=256)
    parser.add_argument("--held-back-cells", type=int, default=2000)
    parser.add_argument("--verify-fields", type=Path, default=DEFAULT_SAMPLES, help="the appliance's check fields")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = build_int8(
        args.bundle, args.crops, args.fields, args.calibration_crops, args.held_back_cells, args.verify_fields
    )
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    if not result["passed"]:
        log.error("INT8 graphs refused, nothing written: %s", "; ".join(result["failures"]))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
