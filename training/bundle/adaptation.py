"""The cells a bundle carries so a box can adapt it to its lab's microscope (issue 41).

A box has no training data. So the bundle ships, as each stage-2 member head's input (features,
float16, computed by the bundle's own graph on crops cut as the count path cuts them):
- replay: up to ``--per-class`` training cells of each code of matek_bm and pbc_cells (their train
  splits): the adapted heads are held to the base's outputs on them, blasts included;
- reference: every matek_bm test cell, held back from training: the gate's home figures;
- calibration: every matek_bm validation cell: the blast confidence is restored on them after a fit.

    python -m training.bundle.adaptation --bundle models/marrow-bm --version 2.0.3
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from edge.adaptation.heads import FeatureExtractor, find_heads, load_graph
from edge.engines.bundle import AdaptationSpec, Bundle, CellSet, file_entry, load_bundle, write_manifest
from training.data.splits import cell_splits
from training.evaluation.evaluate import bundle_crops
from training.fitting.marrow import CODE_TO_CLASS, DATA

log = logging.getLogger(__name__)
FOLDER = "adaptation"
LICENCES = {"matek_bm": "Matek et al. 2021, TCIA, CC BY 4.0", "pbc_cells": "Acevedo et al. 2020, CC BY 4.0"}


def _features(bundle: Bundle, crops: np.ndarray) -> list[np.ndarray]:
    graph = load_graph(bundle.path(bundle.manifest.classifier.file))
    return FeatureExtractor(graph, find_heads(graph, len(bundle.manifest.classes)))(crops, batch=64)


def _write(bundle: Bundle, name: str, samples: list, sources: list[str]) -> CellSet:
    images = [cv2.cvtColor(cv2.imread(str(s.image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for s in samples]
    labels = np.array([bundle.class_names[CODE_TO_CLASS[s.label]] for s in samples])
    features = _features(bundle, bundle_crops(bundle, images))
    path = bundle.root / FOLDER / f"{name}.npz"
    path.parent.mkdir(exist_ok=True)
    arrays = {f"features_{i}": f.astype(np.float16) for i, f in enumerate(features)}
    np.savez_compressed(path, labels=labels, codes=np.array([s.label for s in samples]), **arrays)
    log.info("%s: %d cells, %.1f MB", name, len(samples), path.stat().st_size / 1e6)
    return CellSet(
        file=f"{FOLDER}/{name}.npz",
        cells=len(samples),
        per_class=dict(sorted(Counter(labels.tolist()).items())),
        sources=sources,
    )


def replay_samples(per_class: int, data: Path = DATA, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    chosen = []
    for name in ("matek_bm", "pbc_cells"):
        by_code: dict[str, list] = {}
        for sample in cell_splits(data, name)["train"]:
            by_code.setdefault(sample.label, []).append(sample)
        for code in sorted(by_code):
            picked = rng.choice(len(by_code[code]), min(per_class, len(by_code[code])), replace=False)
            chosen += [by_code[code][i] for i in sorted(picked)]
    return chosen


def add_adaptation(bundle_dir: Path, per_class: int, version: str | None, data: Path = DATA) -> AdaptationSpec:
    bundle = load_bundle(bundle_dir)
    replay = _write(
        bundle,
        "replay",
        replay_samples(per_class, data),
        [f"{n} train split (seed 0), up to {per_class} a code; {LICENCES[n]}" for n in LICENCES],
    )
    reference = _write(
        bundle,
        "reference",
        cell_splits(data, "matek_bm")["test"],
        [f"matek_bm test split (seed 0), every cell, never trained on; {LICENCES['matek_bm']}"],
    )
    calibration = _write(
        bundle,
        "calibration",
        cell_splits(data, "matek_bm")["val"],
        [f"matek_bm validation split (seed 0), every cell, never trained on; {LICENCES['matek_bm']}"],
    )
    spec = AdaptationSpec(replay=replay, reference=reference, calibration=calibration)
    sets = (replay, reference, calibration)
    files = dict(bundle.manifest.files) | {s.file: file_entry(bundle.root / s.file) for s in sets}
    update = {"adaptation": spec, "files": files} | ({"version": version} if version else {})
    write_manifest(bundle.root, bundle.manifest.model_copy(update=update))
    load_bundle(bundle.root)
    return spec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=80, help="replay cells per code of each set (default 80)")
    parser.add_argument("--version", help="the bundle's new version")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = add_adaptation(args.bundle, args.per_class, args.version, args.data)
    log.info("replay %d cells, reference %d cells", spec.replay.cells, spec.reference.cells)


if __name__ == "__main__":
    main()
