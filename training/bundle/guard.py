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
from training.data.cells import central_cell_box
from training.data.readers import IMAGE_SUFFIXES
from training.data.splits import cell_split
from training.evaluation.evaluate import bundle_crops

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
WHITE_CODES = {  # the white cells of each set (the guard and the countable threshold read these)
    "pbc_cells": ["BA", "BNE", "EO", "ERB", "LY", "MMY", "MO", "MY", "PMY", "SNE"],
    "matek_bm": ["BLA", "LYT", "MON", "EOS", "NGS", "PMO"],
}


def cell_statistics(bundle: Bundle, paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: stain features (as the count path computes them), top probability, whether stage 1
    and the class would count it, and the class it is called."""
    images = [decode_image(p.read_bytes(), p.name) for p in paths]
    balanced = [white_balance(i) if bundle.manifest.colour_normalisation == "background" else i for i in images]
    features = np.stack([cell_colour_features(b, central_cell_box(b)[0][None])[0] for b in balanced])
    spec = bundle.manifest.classifier
    classifier = Classifier(OnnxRuntimeBackend(bundle.path(spec.file)), len(bundle.class_names), max_batch=32)
    p_countable, probs = classifier(bundle_crops(bundle, images))
    never = np.array([c.role == "not_countable" for c in bundle.manifest.classes])
    called = probs.argmax(axis=1)
    counted = (p_countable >= spec.countable_threshold) & ~never[called]
    return features, probs.max(axis=1), counted, called


def pseudo_slides(
    stats: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    spec: DomainGuardSpec,
    cells: int,
    n: int,
    seed: int = 0,
    rich: np.ndarray | None = None,
) -> list:
    """``n`` slides of ``cells`` counted cells each (cells drawn anew for each slide). With ``rich``
    (a mask), half of each slide's cells come from it: a slide rich in one kind of cell."""
    features, confidence, counted, called = stats
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(counted)
    checks = []
    for _ in range(n):
        if rich is not None:
            heavy = np.flatnonzero(counted & rich)
            light = np.flatnonzero(counted & ~rich)
            chosen = np.concatenate([rng.choice(heavy, cells // 2), rng.choice(light, cells - cells // 2)])
        else:
            chosen = rng.choice(pool, size=min(cells, len(pool)), replace=False)
        guard = DomainGuard(spec)
        for i in chosen:
            guard.add(features[i], float(confidence[i]), int(called[i]))
        checks.append(guard.check())
    return checks


def field_statistics(bundle: Bundle, fields: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same per-cell statistics taken as the count path takes them: every cell the appliance
    finds on whole fields (detector boxes, its own crops), counted or not."""
    from edge.analysis.field import FieldAnalyzer
    from edge.analysis.field_models import reference_model
    from edge.config import AppConfig

    model = reference_model(bundle, AppConfig(bundle=bundle.root).analysis)
    analyzer = FieldAnalyzer(bundle, model, colour_features=True)  # the bundle has no guard yet
    index = {name: i for i, name in enumerate(bundle.class_names)}
    rows = []
    for path in fields:
        for cell in analyzer(decode_image(path.read_bytes(), path.name)).cells:
            if cell.colour is not None:
                rows.append((cell.colour, cell.class_probability, cell.countable, index[cell.class_name]))
    if not rows:
        return np.zeros((0, 6)), np.zeros(0), np.zeros(0, bool), np.zeros(0, int)
    colour, confidence, counted, called = zip(*rows, strict=True)
    return np.asarray(colour), np.asarray(confidence), np.asarray(counted), np.asarray(called)


def calibrate(
    bundle: Bundle, data: Path = DATA, cells: int = 50, slides: int = 400, fields: list[Path] | None = None
) -> DomainGuardSpec:
    """Per-class means of the validation cells' features (by the class each is called), the mean
    and covariance of each cell's residual from its class mean; thresholds just beyond the worst
    validation pseudo-slide (x 1.15 distance, - 0.05 confidence). ``fields``: validation fields
    counted through the count path as well (detector boxes differ a little from the boxes the
    single-cell images get), so the thresholds hold for both."""
    per_set = {
        name: cell_statistics(bundle, _split_paths(data, name, codes, "val")) for name, codes in WHITE_CODES.items()
    }
    if fields:
        per_set["validation fields"] = field_statistics(bundle, fields)
    feats = np.concatenate([st[0] for st in per_set.values()])
    called = np.concatenate([st[3] for st in per_set.values()])
    counted = np.concatenate([st[2] for st in per_set.values()])
    overall = feats[counted].mean(axis=0)
    class_means = np.stack(
        [feats[counted & (called == k)].mean(axis=0) if (counted & (called == k)).sum() >= 5 else overall
         for k in range(len(bundle.class_names))]
    )  # fmt: skip
    residuals = (feats - class_means[called])[counted]
    mean = residuals.mean(axis=0)
    cov = np.cov(residuals, rowvar=False) + np.eye(feats.shape[1]) * 1e-6
    loose = DomainGuardSpec(
        mean=mean.tolist(), inv_cov=np.linalg.inv(cov).tolist(), class_means=class_means.tolist(),
        max_colour_distance=1e9, min_mean_confidence=0.0, min_cells=1,
    )  # fmt: skip
    distances, confidences = [], []
    for stats in per_set.values():
        for check in pseudo_slides(stats, loose, cells, slides):
            distances.append(check.colour_distance)
            confidences.append(check.mean_confidence)
    return DomainGuardSpec(
        mean=[round(float(v), 6) for v in mean],
        inv_cov=[[round(float(v), 6) for v in row] for row in np.linalg.inv(cov)],
        class_means=[[round(float(v), 6) for v in row] for row in class_means],
        max_colour_distance=round(float(max(distances)) * 1.15, 4),
        min_mean_confidence=round(max(float(min(confidences)) - 0.05, 0.0), 4),
        min_cells=20,
        calibration={
            "data": "validation splits of pbc_cells and matek_bm (seed 0) as single cells"
            + (f", and {len(fields)} validation fields through the count path" if fields else "")
            + "; never test, never zheng2018",
            "pseudo_slides": f"{slides} per set of {cells} counted cells",
            "features": "each cell's stain features minus the mean of the class it is called",
            "colour_distance_max_seen": round(float(max(distances)), 4),
            "mean_confidence_min_seen": round(float(min(confidences)), 4),
            "rule": "threshold = worst validation pseudo-slide x 1.15 (distance), - 0.05 (confidence)",
        },
    )


def _split_paths(data: Path, name: str, codes: list[str], split: str) -> list[Path]:
    return [s.image for s in cell_split(data, name, split, codes)]


def _folder_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def measure(bundle: Bundle, data: Path = DATA, cells: int = 50, slides: int = 200) -> dict:
    """How often the guard trips on pseudo-slides of each held-back or foreign set."""
    spec = bundle.manifest.domain_guard
    if spec is None:
        raise ValueError(f"bundle {bundle.manifest.name} has no domain guard")
    sources: dict[str, list[Path]] = {
        f"{name} test": _split_paths(data, name, codes, "test") for name, codes in WHITE_CODES.items()
    }
    for part in ("dataset1", "dataset2"):
        folder = data / "zheng2018_wbc" / part
        if folder.is_dir():
            sources[f"zheng2018 {part}"] = _folder_paths(folder)
    out = {}
    for label, paths in sources.items():
        stats = cell_statistics(bundle, paths)
        out[label] = _rates(stats, pseudo_slides(stats, spec, cells, slides, seed=1), len(paths))
        if label == "matek_bm test":  # a leukaemic marrow: half of the counted cells blasts
            blasts = np.array([p.parent.name == "BLA" for p in paths])
            rich = pseudo_slides(stats, spec, cells, slides, seed=2, rich=blasts)
            out["matek_bm test, half blasts"] = _rates(stats, rich, len(paths))
        log.info("%s: %s", label, out[label])
    return out


def _rates(stats: tuple, checks: list, cells: int) -> dict:
    return {
        "cells": cells,
        "counted": int(stats[2].sum()),
        "slides": len(checks),
        "tripped": round(float(np.mean([c.shifted for c in checks])), 4),
        "colour_distance_median": round(float(np.median([c.colour_distance for c in checks])), 3),
        "mean_confidence_median": round(float(np.median([c.mean_confidence for c in checks])), 3),
    }


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
