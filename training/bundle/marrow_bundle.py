"""Assemble the marrow bundle from its trained runs, measure it on every held-back and foreign
set, calibrate its domain-shift guard, and write its manifest and README.

    python -m training.marrow_bundle --detector RUN --stage1 RUN --stage2 RUN RUN RUN \\
        --fields /work/exp/marrow_fields --out models/marrow-bm

Each RUN is an output folder of training.fitting.detection / training.fitting.marrow (``best.pt``, ``run.json``,
``history.json``); ``--fields`` is the composed marrow field set (``training.data.compose fields``).
Every figure comes from the appliance's inference path (ONNX Runtime on the exported bundle).

New stage-2 members around an assembled bundle's detector and stage 1 (their weights, recipes,
score threshold and stage-1 test figures are kept; everything else is measured again):

    python -m training.marrow_bundle --keep models/marrow-bm --stage2 RUN keep RUN \
        --fields /work/exp/marrow_fields --version 1.3.0 --out /work/exp/b130/marrow-bm

(``keep`` in place of a RUN keeps that member; write outside the repo, then copy over the bundle.)
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
from dataclasses import asdict
from pathlib import Path

import numpy as np

from build_engines.export import ExportRequest, export_bundle
from edge.engines.bundle import Bundle, load_bundle, write_manifest
from edge.engines.graphs import PROFILES
from training.bundle.bundle_readme import write_readme
from training.bundle.countable import RULE, choose, validation_cells
from training.bundle.guard import calibrate, measure
from training.bundle.starter import _recipe_record, _run_info, stage1_test, tune_score_threshold
from training.data.compose import DATA
from training.evaluation.evaluate import evaluate_cells, evaluate_fields
from training.evaluation.slides import summary as slide_summary
from training.evaluation.slides import table as slide_table
from training.evaluation.slides import validate
from training.fitting.marrow import CROP_MARGIN, MARROW_CLASSES

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
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
    from training.bundle.guard import cell_statistics
    from training.data.splits import cell_split

    test = cell_split(data, "matek_bm", "test", ["NIF", "ART"])
    _, _, counted, _ = cell_statistics(load_bundle(bundle_dir), [s.image for s in test])
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
    lite = ROOT / "models" / "lite-pbc"
    baseline = {
        part: evaluate_cells(lite, data / "zheng2018_wbc" / part, groups=True)["grouped_accuracy"]
        for part in zheng
        if (lite / "bundle.json").is_file()
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
            | {"lite_pbc_grouped_accuracy": baseline.get(k)}
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
    parser.add_argument("--readme-only", action="store_true", help="rewrite the README of --out from its manifest")
    parser.add_argument(
        "--guard-only",
        action="store_true",
        help="recalibrate and remeasure the guard of --out, rerun the slide validation, rewrite the README",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="an assembled bundle whose detector (and stage 1, unless --stage1 names a new run) is kept",
    )
    parser.add_argument("--detector", type=Path)
    parser.add_argument("--stage1", type=Path)
    parser.add_argument(
        "--stage2", type=Path, nargs="+", help="in the profile's member order; with --keep, 'keep' keeps that member"
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="the bundle's profile (default: the --keep bundle's, else lite); its stage-2 members are --stage2's",
    )
    parser.add_argument("--fields", type=Path, help="composed marrow fields (YOLO, with splits)")
    parser.add_argument("--det-data", type=Path, help="the detector's train/val set (threshold tuning)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "marrow-bm")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument(
        "--robustness",
        type=Path,
        default=ROOT / "training" / "marrow_robustness.md",
        help="markdown: the zheng figures of each robustness step (the README's section)",
    )
    parser.add_argument(
        "--colour-normalisation",
        choices=["none", "background"],
        default="none",
        help="white-balance each field in the count path (background) or not (none; see the bundle README)",
    )
    parser.add_argument(
        "--countable-threshold",
        default="auto",
        type=_threshold_arg,
        help="stage-1 cut-off: 'auto' chooses it on validation cells (training.bundle.countable), or a number",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.readme_only:
        write_readme(args.out, args.robustness)
        return
    if args.guard_only:
        if not args.fields:
            parser.error("--guard-only needs --fields (its validation fields calibrate the guard)")
        redo_guard(args.out, args.data, args.robustness, args.fields)
        return
    kept = None
    if args.keep:
        if not (args.stage2 and args.fields):
            parser.error("--keep needs --stage2 and --fields")
        kept = load_bundle(args.keep)  # read before --out (often the same folder) is rewritten
    elif not (args.detector and args.stage1 and args.stage2 and args.fields and args.det_data):
        parser.error("--detector, --stage1, --stage2, --fields and --det-data are needed to assemble a bundle")

    if kept is None and any(str(run) == "keep" for run in args.stage2):
        parser.error("a stage-2 member can be kept only from a --keep bundle")
    profile = args.profile or (kept.manifest.profile if kept else "lite")
    members = PROFILES[profile].stage2
    if len(args.stage2) != len(members):
        parser.error(f"profile {profile} has {len(members)} stage-2 members ({', '.join(members)}): give as many runs")
    if kept and profile != kept.manifest.profile and "keep" in map(str, args.stage2):
        parser.error("a member can be kept only within the kept bundle's own profile")
    if kept and args.stage1 is None and kept.manifest.classifier.stage1 != PROFILES[profile].stage1:
        parser.error(
            f"the kept bundle's stage 1 is {kept.manifest.classifier.stage1}, profile {profile}'s is "
            f"{PROFILES[profile].stage1}: give --stage1 RUN"
        )
    # each part's weights and record: a training run, or (None / 'keep') the --keep bundle's own
    runs = {"detector": None if args.keep else args.detector, "stage1": args.stage1}
    runs |= {f"stage2_{i}": None if str(run) == "keep" else run for i, run in enumerate(args.stage2)}
    sources = {part: _part_source(part, run, kept) for part, run in runs.items()}
    records = {part: record for part, (_, record) in sources.items()}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        for part, (path, _) in sources.items():
            shutil.copy(path, weights / f"{part}.pt")
        request = ExportRequest(
            out_dir=args.out,
            profile=profile,
            name=args.out.name,
            version=args.version,
            classes=MARROW_CLASSES,
            detector_labels=("wbc",),
            weights_dir=weights,
            score_threshold=kept.manifest.detector.score_threshold if kept else 0.5,
            crop_margin=CROP_MARGIN,
            parity_images=sorted(SAMPLES.glob("*.jpg")),
        )
        export_bundle(request)
        if kept is None:  # a new detector: its threshold is tuned on validation fields as the count path sees them
            _mark(args.out, None, args.colour_normalisation)
            request.score_threshold = round(tune_score_threshold(args.out, args.det_data), 4)
            export_bundle(request)
    _mark(args.out, None, args.colour_normalisation)
    countable = countable_threshold(args.out, args.data, args.countable_threshold)
    _mark(args.out, None, args.colour_normalisation, countable["chosen"])
    bundle = load_bundle(args.out)
    guard = calibrate(bundle, args.data, fields=validation_fields(args.fields, args.data))
    _mark(args.out, guard, args.colour_normalisation)
    metrics = measure_all(args.out, args.fields, args.data)
    if kept and args.stage1 is None:  # the same stage-1 weights on the same test set: its figures stand
        metrics["stage1_test"] = kept.manifest.provenance["metrics"]["stage1_test"]
    else:
        metrics["stage1_test"] = stage1_test(args.out, args.stage1)
    metrics["matek_nif_art_test"] = not_countable_counted(args.out, args.data)
    metrics["guard"] = measure(load_bundle(args.out), args.data)
    metrics["countable_threshold"] = countable
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
        "crops": "training.data.cells: central cell's box from its nucleus, cut as the count path cuts "
        f"(margin {CROP_MARGIN}), after background white balance",
        "recipes": records,
        "trained_where": f"{platform.node()} ({platform.machine()}, CPU only)",
        "commit": commit,
        "metrics": metrics,
    }
    manifest = bundle.manifest.model_copy(update={"provenance": provenance})
    write_manifest(args.out, manifest)
    outcomes = validate(args.out, data=args.data)
    provenance["metrics"]["slides"] = slide_summary(outcomes)
    provenance["slides_table"] = slide_table(outcomes)
    write_manifest(args.out, manifest.model_copy(update={"provenance": provenance}))
    write_readme(args.out, args.robustness)
    sys.stdout.write(json.dumps(provenance["metrics"]) + "\n")


def _part_source(part: str, run: Path | None, kept: Bundle | None) -> tuple[Path, dict]:
    """Where a part's weights come from and its recipe record: ``run``'s ``best.pt``, or with no run
    the kept bundle's own file and record (its first origin named). A run trained on from the kept
    bundle's file, which the new bundle replaces, carries that file's history on."""
    if kept is None:
        assert run is not None  # main() asks for every run without --keep
        return run / "best.pt", _recipe_record(_run_info(run))
    own = kept.path(f"torch/{part}.pt")
    origin = f"{kept.manifest.name} {kept.manifest.version}"
    recipes = kept.manifest.provenance["recipes"]
    if run is None:
        return own, {"kept_from": origin} | recipes[part]  # an earlier kept_from wins: the first origin
    record = _recipe_record(_run_info(run))
    if Path(record["init"]).resolve() == own.resolve():
        record |= {"init": f"{origin} torch/{part}.pt", "continued_from": recipes[part]}
    return run / "best.pt", record


def validation_fields(fields: Path, data: Path) -> list[Path]:
    """The detector's validation fields (all TXL-PBC val fields and the composed marrow val fields),
    counted through the count path for the guard."""
    folders = [fields / "images" / "val", data / "txl_pbc_detection" / "images" / "val"]
    return sorted(p for f in folders if f.is_dir() for p in f.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def redo_guard(bundle_dir: Path, data: Path, robustness: Path | None, fields: Path) -> None:
    """A new guard calibration on an assembled bundle, its rates and the slide table after it."""
    bundle = load_bundle(bundle_dir)
    guard = calibrate(bundle, data, fields=validation_fields(fields, data))
    _mark(bundle_dir, guard, bundle.manifest.colour_normalisation)
    bundle = load_bundle(bundle_dir)
    provenance = dict(bundle.manifest.provenance)
    provenance["metrics"]["guard"] = measure(bundle, data)
    outcomes = validate(bundle_dir, data=data)
    provenance["metrics"]["slides"] = slide_summary(outcomes)
    provenance["slides_table"] = slide_table(outcomes)
    write_manifest(bundle_dir, bundle.manifest.model_copy(update={"provenance": provenance}))
    write_readme(bundle_dir, robustness)


def _threshold_arg(text: str) -> str:
    """'auto' or a probability, checked when the command line is read (not after minutes of export)."""
    if text != "auto":
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{text!r}: give 'auto' or a number from 0 to 1")
    return text


def countable_threshold(bundle_dir: Path, data: Path, given: str) -> dict:
    """The stage-1 threshold and how it was chosen: by the validation rule ('auto') or given."""
    if given != "auto":
        return {"chosen": float(given), "rule": "given at assembly"}
    chosen, scan = choose(validation_cells(load_bundle(bundle_dir), data))
    log.info("countable threshold %.2f (validation scan: %s)", chosen, scan)
    return {"chosen": chosen, "rule": RULE, "validation_scan": [asdict(row) for row in scan]}


def _mark(bundle_dir: Path, guard, colour: str, countable_threshold: float | None = None) -> None:
    """The marrow bundle's own settings, over what export writes (the countable threshold: kept unless given)."""
    bundle = load_bundle(bundle_dir)
    update = {"training_crops": "central_cell"}
    if countable_threshold is not None:
        update["countable_threshold"] = countable_threshold
    classifier = bundle.manifest.classifier.model_copy(update=update)
    update = {
        "colour_normalisation": colour,
        "classifier": classifier,
        "trained_on": "bone_marrow",
        "clinical_use": False,
        "domain_guard": guard,
    }
    write_manifest(bundle_dir, bundle.manifest.model_copy(update=update))


if __name__ == "__main__":
    main()
