"""A lab's next bundle version from its reviewed cells: fine-tune the base bundle's classifier
members on ``marrow-edge review export`` sets, and promote the result only if it is not worse
than the base on the held-back data.

    python -m training.finetune --base models/marrow-bm --reviewed EXPORT [EXPORT ...] \\
        --crops /work/exp/crops --version 1.2.1-lab --out models/marrow-bm-lab

Each member starts from the base bundle's weights (``torch/stage2_<i>.pt``) and trains a few epochs
at a low learning rate on the reviewed cells plus a replay sample of the base's own training crops
(so it does not forget what the lab did not review); best.pt is chosen on the base's validation
split. Detector and stage 1 are the base's. Both bundles are then scored the same way on the
held-back test split (the crops cache): the comparison is printed and stored in bundle.json
(``provenance.finetune``). A candidate worse than the base (lower macro-F1) is written to
``<out>.rejected`` instead of ``--out``, and the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from edge.engines.bundle import Bundle, load_bundle, write_manifest
from edge.engines.graphs import build_classifier
from training.evaluation.evaluate import folder_to_class
from training.evaluation.metrics import confusion_matrix, precision_recall_f1
from training.fitting.augment import STAIN_ROBUST
from training.fitting.loop import CellDataset, Recipe, train_classifier
from training.fitting.marrow import CACHE_SIDE, init_from, load_crops

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
MATEK_SIX = ("blast", "lymphocyte", "monocyte", "eosinophil", "neutrophilic_segmented", "promyelocyte")


def read_reviewed(folders: list[Path], class_names: list[str]) -> tuple[list[np.ndarray], list[int], list[dict]]:
    """Crops and labels of review exports (folder per class, manifest.json); unknown folders refused."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    manifests = []
    for folder in folders:
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            raise SystemExit(f"{folder}: no manifest.json (make it with marrow-edge review export)")
        manifests.append(json.loads(manifest.read_text()))
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if sub.name not in class_names:
                raise SystemExit(f"{sub}: {sub.name!r} is not a class of the base bundle ({', '.join(class_names)})")
            for path in sorted(sub.glob("*.jpg")):
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    raise SystemExit(f"{path}: not a readable JPEG")
                # the stored crop is what the classifier saw; the training crops are the same view, larger
                image = cv2.resize(image, (CACHE_SIDE, CACHE_SIDE), interpolation=cv2.INTER_LINEAR)
                images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
                labels.append(class_names.index(sub.name))
    if not images:
        raise SystemExit("no reviewed cells in " + ", ".join(map(str, folders)))
    return images, labels, manifests


def _labels(codes: np.ndarray, bundle: Bundle) -> np.ndarray:
    """Dataset codes (BLA, LYT, ...) -> the bundle's class indices, by name or alias as `evaluate cells` reads them."""
    mapping, unknown = folder_to_class(bundle, sorted({str(c) for c in codes}))
    if unknown:
        raise SystemExit(f"codes the bundle has no class for: {', '.join(unknown)}")
    return np.array([mapping[str(c)] for c in codes])


def score(bundle_dir: Path, crops: dict[str, np.ndarray]) -> dict[str, Any]:
    """Macro-F1 of a bundle's fused classifier on cached crops: all, per data set, and matek's six classes."""
    bundle = load_bundle(bundle_dir)
    size = bundle.manifest.classifier.crop_size
    names = bundle.class_names
    model = str(bundle_dir / bundle.manifest.classifier.file)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    images = np.stack([cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) for i in crops["images"]])
    batches = [images[i : i + 64] for i in range(0, len(images), 64)]
    probs = np.concatenate([session.run(["probs"], {"images": b})[0] for b in batches])
    truth, predicted = _labels(crops["codes"], bundle), probs.argmax(1)

    def macro(mask: np.ndarray, only: tuple[str, ...] | None = None) -> float:
        present = sorted(set(truth[mask].tolist()))
        keep = [i for i in present if only is None or names[i] in only]
        f1 = precision_recall_f1(confusion_matrix(truth[mask], predicted[mask], len(names)))[2]
        return round(float(np.mean(f1[keep])), 4) if keep else float("nan")

    everything = np.ones(len(truth), bool)
    sets = crops["sets"]
    return {
        "cells": len(truth),
        "macro_f1": macro(everything),
        "accuracy": round(float((truth == predicted).mean()), 4),
        "matek_bm_macro_f1_six": macro(sets == "matek_bm", MATEK_SIX),
        "pbc_cells_macro_f1": macro(sets == "pbc_cells"),
    }


def promote(base: dict[str, Any], candidate: dict[str, Any]) -> tuple[bool, str]:
    """Promoted only when the candidate is not worse than the base on the held-back data."""
    if candidate["macro_f1"] < base["macro_f1"]:
        return False, f"held-back macro-F1 {candidate['macro_f1']:.4f} < base {base['macro_f1']:.4f}"
    return True, f"held-back macro-F1 {candidate['macro_f1']:.4f} >= base {base['macro_f1']:.4f}"


def finetune(args: argparse.Namespace) -> int:
    base = load_bundle(args.base)
    manifest = base.manifest
    names = base.class_names
    images, labels, manifests = read_reviewed(args.reviewed, names)
    log.info("%d reviewed cells from %d export(s)", len(images), len(args.reviewed))
    train, val, test = (load_crops(args.crops, s) for s in ("train", "val", "test"))
    rng = np.random.default_rng(args.seed)
    replay = rng.choice(len(train["codes"]), min(args.replay, len(train["codes"])), replace=False)
    train_images = images * args.repeat + [train["images"][i] for i in replay]
    train_labels = labels * args.repeat + _labels(train["codes"][replay], base).tolist()
    recipe = Recipe(
        epochs=args.epochs, lr=args.lr, batch_size=32, t_max=None, weight_decay=1e-5, label_smoothing=0.1,
        resolution=manifest.classifier.crop_size, seed=args.seed,
    )  # fmt: skip
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        shutil.copytree(args.base / "torch", weights)
        for i, arch in enumerate(manifest.classifier.stage2):
            network = build_classifier(arch, len(names))
            missing = init_from(network, args.base / "torch" / f"stage2_{i}.pt")
            if missing:
                raise SystemExit(f"stage2_{i} ({arch}): the base weights do not fit: {missing[:3]}")
            run = Path(tmp) / f"stage2_{i}"
            train_classifier(
                network,
                CellDataset(train_images, train_labels, recipe.resolution, STAIN_ROBUST, seed=args.seed),
                CellDataset(val["images"], _labels(val["codes"], base), recipe.resolution, None),
                names,
                recipe,
                run,
                resume=False,
            )
            shutil.copy(run / "best.pt", weights / f"stage2_{i}.pt")
        candidate = Path(tmp) / "candidate"
        _export(base, weights, candidate, args.version)
        base_score, new_score = score(args.base, test), score(candidate, test)
        promoted, why = promote(base_score, new_score)
        comparison = {
            "base": f"{manifest.name} {manifest.version} ({base.short_hash})",
            "reviewed": [
                {"export": str(f), "slides": [s["slide_id"] for s in m["slides"]], "cells": m["cells"],
                 "reviewed_by": sorted({r for s in m["slides"] for r in s.get("reviewed_by", [])})}
                for f, m in zip(args.reviewed, manifests, strict=True)
            ],
            "recipe": {"epochs": args.epochs, "lr": args.lr, "replay": len(replay), "repeat": args.repeat},
            "held_back": "the crops cache's test split (image-wise, never trained on or chosen with)",
            "base_test": base_score,
            "candidate_test": new_score,
            "promoted": promoted,
            "decision": why,
        }  # fmt: skip
        new = load_bundle(candidate).manifest
        provenance = dict(new.provenance) | {"finetune": comparison}
        write_manifest(candidate, new.model_copy(update={"provenance": provenance}))
        target = out if promoted else out.with_name(out.name + ".rejected")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(candidate, target)
    sys.stdout.write(json.dumps({"base": base_score, "candidate": new_score, "promoted": promoted}) + "\n")
    sys.stdout.write(("PROMOTED: " if promoted else "NOT PROMOTED: ") + f"{why}; bundle at {target}\n")
    return 0 if promoted else 1


def _export(base: Any, weights: Path, out: Path, version: str) -> None:
    """The base bundle's settings with the new members' weights; the guard and the rest carried over."""
    from build_engines.export import ExportRequest, export_bundle

    manifest = base.manifest
    request = ExportRequest(
        out_dir=out,
        profile=manifest.profile,
        name=manifest.name,
        version=version,
        classes=list(manifest.classes),
        detector_labels=tuple(manifest.detector.labels),
        cell_labels=tuple(manifest.detector.cell_labels) if manifest.detector.cell_labels else None,
        weights_dir=weights,
        score_threshold=manifest.detector.score_threshold,
        crop_margin=manifest.classifier.crop_margin,
        countable_threshold=manifest.classifier.countable_threshold,
        parity_images=sorted((ROOT / "samples" / "marrow").glob("*.jpg")),
    )
    export_bundle(request)
    new = load_bundle(out).manifest
    keep = {
        "classifier": new.classifier.model_copy(update={"training_crops": manifest.classifier.training_crops}),
        "colour_normalisation": manifest.colour_normalisation,
        "domain_guard": manifest.domain_guard,
        "trained_on": manifest.trained_on,
        "clinical_use": manifest.clinical_use,
        "provenance": dict(manifest.provenance) | {"finetuned_from": f"{manifest.name} {manifest.version}"},
    }
    write_manifest(out, new.model_copy(update=keep))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=ROOT / "models" / "marrow-bm")
    parser.add_argument("--reviewed", type=Path, nargs="+", required=True, help="marrow-edge review export folders")
    parser.add_argument("--crops", type=Path, required=True, help="the crops cache (python -m training.marrow crops)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--replay", type=int, default=3000, help="base training crops mixed in")
    parser.add_argument("--repeat", type=int, default=4, help="each reviewed cell this many times per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    raise SystemExit(finetune(args))


if __name__ == "__main__":
    main()
