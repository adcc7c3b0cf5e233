"""Assemble the marrow bundle from its trained runs, measure it on every held-back and foreign
set, calibrate its domain-shift guard, and write its manifest and README.

    python -m training.marrow_bundle --detector RUN --stage1 RUN --stage2 RUN RUN RUN \\
        --fields /work/exp/marrow_fields --out models/marrow-bm

Each RUN is an output folder of training.detection / training.marrow (``best.pt``, ``run.json``,
``history.json``); ``--fields`` is the composed marrow field set (``training.compose fields``).
Every figure comes from the appliance's inference path (ONNX Runtime on the exported bundle).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from build_engines.export import ExportRequest, export_bundle
from edge.engines.bundle import load_bundle, write_manifest
from training.compose import DATA
from training.evaluate import evaluate_cells, evaluate_fields
from training.guard import calibrate, measure
from training.marrow import CROP_MARGIN, MARROW_CLASSES
from training.starter import _recipe_record, _run_info, stage1_test, tune_score_threshold

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "marrow"

SOURCES = {
    "matek_bm": {
        "source": "Matek et al., An Expert-Annotated Dataset of Bone Marrow Cytology in Hematologic Malignancies, "
        "TCIA 2021 (doi 10.7937/TCIA.AXH3-T579); Blood 2021;138(20):1917-1927",
        "licence": "CC BY 4.0",
        "use": "stage 2 (blast, promyelocyte, lymphocyte, monocyte, eosinophil, segmented neutrophil; NIF and ART "
        "as not countable), stage 1, composed marrow fields for the detector",
    },
    "pbc_cells": {
        "source": "PBC data set, Acevedo et al., Data in Brief 30 (2020)",
        "licence": "CC BY 4.0",
        "use": "stage 2 (ten blood classes; platelets as not countable), stage 1",
    },
    "txl_pbc_detection": {
        "source": "TXL-PBC (GitHub lugan113/TXL-PBC_Dataset, commit 056d09e)",
        "licence": "MIT",
        "use": "detector (every other train field, all val fields), stage 1 (RBC and platelet boxes)",
    },
    "zheng2018_wbc": {
        "source": "Zheng et al., Micron 107 (2018); GitHub zxaoyou/segmentation_WBC",
        "licence": "GPL-3.0",
        "use": "measuring only (another lab's cameras and stains); never trained on or calibrated with",
    },
}


def not_countable_counted(bundle_dir: Path, data: Path) -> dict:
    """matek_bm test NIF + ART cells: the share the appliance would count (stage 1 and class both let it)."""
    from training.guard import cell_statistics
    from training.readers import read_cell_folders, split_samples

    test = split_samples(read_cell_folders(data / "matek_bm", ["NIF", "ART"]), seed=0)["test"]
    _, _, counted = cell_statistics(load_bundle(bundle_dir), [s.image for s in test])
    per_code = {code: float(counted[[s.label == code for s in test]].mean()) for code in ("NIF", "ART")}
    return {"n": len(test), "counted_rate": round(float(counted.mean()), 4)} | {
        f"{k}_counted_rate": round(v, 4) for k, v in per_code.items()
    }


def measure_all(bundle_dir: Path, fields: Path, data: Path) -> dict:
    matek = evaluate_cells(bundle_dir, data / "matek_bm", split="test")
    pbc = evaluate_cells(bundle_dir, data / "pbc_cells", split="test")
    zheng = {
        part: evaluate_cells(bundle_dir, data / "zheng2018_wbc" / part, groups=True)
        for part in ("dataset1", "dataset2")
        if (data / "zheng2018_wbc" / part).is_dir()
    }
    six = ["blast", "lymphocyte", "monocyte", "eosinophil", "neutrophilic_segmented", "promyelocyte"]
    f1_six = float(np.mean([matek["per_class"][c]["f1"] for c in six]))
    pbc_countable = [c for c in pbc["per_class"] if c != "not_countable" and pbc["per_class"][c]["n"]]
    confusion = np.asarray(pbc["confusion_matrix"])
    names = pbc["classes"]
    blast_col = names.index("blast")
    blood_rows = [names.index(c) for c in pbc_countable]
    blood_as_blast = float(confusion[blood_rows, blast_col].sum() / confusion[blood_rows].sum())
    detector_marrow = evaluate_fields(bundle_dir, "yolo", fields, ["WBC"], split="test")
    detector_blood = evaluate_fields(bundle_dir, "yolo", data / "txl_pbc_detection", ["WBC"], split="test")
    return {
        "matek_test": _cells_summary(matek) | {"macro_f1_six": round(f1_six, 4)},
        "pbc_test": _cells_summary(pbc)
        | {
            "macro_f1_blood_classes": round(float(np.mean([pbc["per_class"][c]["f1"] for c in pbc_countable])), 4),
            "blood_called_blast": round(blood_as_blast, 4),
        },
        "zheng2018": {
            k: {m: v[m] for m in ("n", "grouped_accuracy", "macro_group_accuracy", "per_group", "called")}
            for k, v in zheng.items()
        },
        "detector_marrow_composed_test": {
            k: detector_marrow[k] for k in ("images", "ground_truth", "ap50", "coco_ap", "at_bundle_threshold")
        },
        "detector_txl_test": {
            k: detector_blood[k] for k in ("images", "ground_truth", "ap50", "coco_ap", "at_bundle_threshold")
        },
    }


def _cells_summary(report: dict) -> dict:
    return {
        "n": report["n"],
        "accuracy": round(report["accuracy"], 4),
        "macro_f1": round(report["macro_f1"], 4),
        "per_class": {
            c: {k: round(v[k], 4) for k in ("sensitivity", "precision", "f1") if v[k] == v[k]} | {"n": v["n"]}
            for c, v in report["per_class"].items()
            if v["n"]
        },
        "stage1_countable_rate": round(report["stage1_countable_rate"], 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=Path, required=True)
    parser.add_argument("--stage1", type=Path, required=True)
    parser.add_argument("--stage2", type=Path, nargs=3, required=True, help="in the profile's member order")
    parser.add_argument("--fields", type=Path, required=True, help="composed marrow fields (YOLO, with splits)")
    parser.add_argument("--det-data", type=Path, required=True, help="the detector's train/val set (threshold tuning)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "marrow-bm")
    parser.add_argument("--version", default="1.0.0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    runs = {"detector": _run_info(args.detector), "stage1": _run_info(args.stage1)}
    runs |= {f"stage2_{i}": _run_info(d) for i, d in enumerate(args.stage2)}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        shutil.copy(args.detector / "best.pt", weights / "detector.pt")
        shutil.copy(args.stage1 / "best.pt", weights / "stage1.pt")
        for i, run in enumerate(args.stage2):
            shutil.copy(run / "best.pt", weights / f"stage2_{i}.pt")
        request = ExportRequest(
            out_dir=args.out,
            profile="lite",
            name=args.out.name,
            version=args.version,
            classes=MARROW_CLASSES,
            detector_labels=("wbc",),
            weights_dir=weights,
            score_threshold=0.5,
            crop_margin=CROP_MARGIN,
            parity_images=sorted(SAMPLES.glob("*.jpg")),
        )
        export_bundle(request)
        _mark(args.out, guard=None)  # colour normalisation on before the threshold is tuned
        request.score_threshold = round(tune_score_threshold(args.out, args.det_data), 4)
        export_bundle(request)
    _mark(args.out, guard=None)
    bundle = load_bundle(args.out)
    guard = calibrate(bundle, args.data)
    _mark(args.out, guard)
    metrics = measure_all(args.out, args.fields, args.data)
    metrics["stage1_test"] = stage1_test(args.out, args.stage1)
    metrics["matek_nif_art_test"] = not_countable_counted(args.out, args.data)
    metrics["guard"] = measure(load_bundle(args.out), args.data)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    bundle = load_bundle(args.out)
    provenance = dict(bundle.manifest.provenance) | {
        "trained_on": "bone marrow (matek_bm) and peripheral blood (pbc_cells, TXL-PBC), public data; "
        "not for clinical use",
        "data": SOURCES,
        "splits": "each cell set's own image-wise 70/10/20 split (seed 0); TXL-PBC's own splits; composed "
        "marrow fields drawn from the matching matek_bm split only",
        "crops": "training.cells: central cell's box from its nucleus, cut as the count path cuts "
        f"(margin {CROP_MARGIN}), after background white balance",
        "recipes": {k: _recipe_record(v) for k, v in runs.items()},
        "trained_where": f"{platform.node()} ({platform.machine()}, CPU only)",
        "commit": commit,
        "metrics": metrics,
    }
    manifest = bundle.manifest.model_copy(update={"provenance": provenance})
    write_manifest(args.out, manifest)
    load_bundle(args.out)
    sys.stdout.write(json.dumps(metrics) + "\n")


def _mark(bundle_dir: Path, guard) -> None:
    """The marrow bundle's own settings, over what export writes."""
    bundle = load_bundle(bundle_dir)
    classifier = bundle.manifest.classifier.model_copy(update={"training_crops": "central_cell"})
    update = {
        "colour_normalisation": "background",
        "classifier": classifier,
        "trained_on": "bone_marrow",
        "clinical_use": False,
        "domain_guard": guard,
    }
    write_manifest(bundle_dir, bundle.manifest.model_copy(update=update))


if __name__ == "__main__":
    main()
