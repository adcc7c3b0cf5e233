"""Calibrate and measure the domain-shift guard (``edge.counting.domain``) of a bundle.

The guard's statistics are computed per slide; here a slide is a pseudo-slide: ``cells`` cells
drawn at random from one set's split. Thresholds come from validation cells only (both training
sets, never the test parts, never zheng2018); the rates are then measured on the held-back test
parts (should not trip) and on zheng2018_wbc (another lab: should trip).

    python -m training.guard measure --bundle models/marrow-bm
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from edge.analysis.classify import Classifier
from edge.analysis.colour import cell_colour_features, white_balance
from edge.capture.decode import decode_image
from edge.counting.domain import DomainGuard
from edge.engines.bundle import Bundle, DomainGuardSpec, load_bundle
from edge.engines.onnxruntime import OnnxRuntimeBackend
from training.cells import central_cell_box
from training.evaluate import bundle_crops
from training.readers import IMAGE_SUFFIXES, read_cell_folders, split_samples

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SETS = {
    "pbc_cells": ["BA", "BNE", "EO", "ERB", "LY", "MMY", "MO", "MY", "PMY", "SNE"],
    "matek_bm": ["BLA", "LYT", "MON", "EOS", "NGS", "PMO"],
}


def cell_statistics(bundle: Bundle, paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: stain features (as the count path computes them on a balanced field), top
    probability, and whether stage 1 and the class would count it."""
    images = [decode_image(p.read_bytes(), p.name) for p in paths]
    balanced = [white_balance(i) if bundle.manifest.colour_normalisation == "background" else i for i in images]
    features = np.stack([cell_colour_features(b, central_cell_box(b)[0][None])[0] for b in balanced])
    spec = bundle.manifest.classifier
    classifier = Classifier(OnnxRuntimeBackend(bundle.path(spec.file)), len(bundle.class_names), max_batch=32)
    p_countable, probs = classifier(bundle_crops(bundle, images))
    never = np.array([c.role == "not_countable" for c in bundle.manifest.classes])
    counted = (p_countable >= spec.countable_threshold) & ~never[probs.argmax(axis=1)]
    return features, probs.max(axis=1), counted


def pseudo_slides(
    features: np.ndarray,
    confidence: np.ndarray,
    counted: np.ndarray,
    spec: DomainGuardSpec,
    cells: int,
    n: int,
    seed: int = 0,
) -> list:
    """``n`` slides of ``cells`` counted cells each, drawn with replacement between slides."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(counted)
    checks = []
    for _ in range(n):
        guard = DomainGuard(spec)
        for i in rng.choice(pool, size=min(cells, len(pool)), replace=False):
            guard.add(features[i], float(confidence[i]))
        checks.append(guard.check())
    return checks


def calibrate(bundle: Bundle, data: Path = DATA, cells: int = 50, slides: int = 400) -> DomainGuardSpec:
    """Mean and covariance of the validation cells' features; thresholds just beyond the worst
    validation pseudo-slide of either set (x 1.15 distance, - 0.05 confidence)."""
    per_set = {}
    for name, codes in SETS.items():
        val = split_samples(read_cell_folders(data / name, codes), seed=0)["val"]
        per_set[name] = cell_statistics(bundle, [s.image for s in val])
    feats = np.concatenate([f for f, _, c in per_set.values()])
    mean = feats.mean(axis=0)
    cov = np.cov(feats, rowvar=False) + np.eye(feats.shape[1]) * 1e-6
    loose = DomainGuardSpec(
        mean=mean.tolist(),
        inv_cov=np.linalg.inv(cov).tolist(),
        max_colour_distance=1e9,
        min_mean_confidence=0.0,
        min_cells=1,
    )
    distances, confidences = [], []
    for f, conf, counted in per_set.values():
        for check in pseudo_slides(f, conf, counted, loose, cells, slides):
            distances.append(check.colour_distance)
            confidences.append(check.mean_confidence)
    return DomainGuardSpec(
        mean=[round(float(v), 6) for v in mean],
        inv_cov=[[round(float(v), 6) for v in row] for row in np.linalg.inv(cov)],
        max_colour_distance=round(float(max(distances)) * 1.15, 4),
        min_mean_confidence=round(max(float(min(confidences)) - 0.05, 0.0), 4),
        min_cells=20,
        calibration={
            "data": "validation splits of pbc_cells and matek_bm (seed 0), never test, never zheng2018",
            "pseudo_slides": f"{slides} per set of {cells} counted cells",
            "colour_distance_max_seen": round(float(max(distances)), 4),
            "mean_confidence_min_seen": round(float(min(confidences)), 4),
            "rule": "threshold = worst validation pseudo-slide x 1.15 (distance), - 0.05 (confidence)",
        },
    )


def _folder_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def measure(bundle: Bundle, data: Path = DATA, cells: int = 50, slides: int = 200) -> dict:
    """How often the guard trips on pseudo-slides of each held-back or foreign set."""
    spec = bundle.manifest.domain_guard
    if spec is None:
        raise ValueError(f"bundle {bundle.manifest.name} has no domain guard")
    sources: dict[str, list[Path]] = {}
    for name, codes in SETS.items():
        sources[f"{name} test"] = [
            s.image for s in split_samples(read_cell_folders(data / name, codes), seed=0)["test"]
        ]
    for part in ("dataset1", "dataset2"):
        folder = data / "zheng2018_wbc" / part
        if folder.is_dir():
            sources[f"zheng2018 {part}"] = _folder_paths(folder)
    out = {}
    for label, paths in sources.items():
        feats, conf, counted = cell_statistics(bundle, paths)
        checks = pseudo_slides(feats, conf, counted, spec, cells, slides, seed=1)
        out[label] = {
            "cells": len(paths),
            "counted": int(counted.sum()),
            "slides": len(checks),
            "tripped": round(float(np.mean([c.shifted for c in checks])), 4),
            "colour_distance_median": round(float(np.median([c.colour_distance for c in checks])), 3),
            "mean_confidence_median": round(float(np.median([c.mean_confidence for c in checks])), 3),
        }
        log.info("%s: %s", label, out[label])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["measure"])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cells", type=int, default=50, help="counted cells per pseudo-slide")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.stdout.write(json.dumps(measure(load_bundle(args.bundle), args.data, args.cells)) + "\n")


if __name__ == "__main__":
    main()
