"""Site adaptation as a learning curve: zheng2018 dataset1 and dataset2 as a lab's new microscope.

Each set is split per type into an adaptation half and a test half (three draws); k corrected cells per
type are drawn from the adaptation half, the bundle is adapted through the product's own path
(``edge.adaptation.Adapter``: features graph, fit, blast confidence restored), and scored on the test
half (grouped accuracy, share called blast) and on the bundle's reference cells (home six-class
macro-F1, blast sensitivity and precision). ``--split val`` splits the adaptation half again and scores
on its other part, with the home figures on the bundle's validation (calibration) cells: what settings are
chosen on; the test halves and the reference cells are only reported.

    python -m training.evaluation.adaptation --bundle models/marrow-bm --split test --k 5,10,20,50
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edge.adaptation.adapt import Adapter, mean_probs
from edge.adaptation.fit import DEFAULT_SETTINGS, FitSettings
from edge.adaptation.gate import home_figures, site_figures
from edge.adaptation.labels import allowed_mask, group_of
from edge.capture.decode import decode_image
from edge.engines.bundle import load_bundle
from training.data.readers import read_cell_folders
from training.evaluation.evaluate import bundle_crops
from training.fitting.marrow import DATA

SETS = ("dataset1", "dataset2")


def halves(types: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    first, second = [], []
    for t in sorted(set(types)):
        index = rng.permutation([i for i, x in enumerate(types) if x == t])
        first += list(index[: len(index) // 2])
        second += list(index[len(index) // 2 :])
    return np.array(first), np.array(second)


def curve(bundle_dir: Path, split: str, ks: list[int], settings: FitSettings, draws: int = 3, data: Path = DATA):
    bundle = load_bundle(bundle_dir)
    adapter = Adapter(bundle, settings, threads=2)
    sites = {}
    for name in SETS:
        root = data / "zheng2018_wbc" / name
        samples = read_cell_folders(root, sorted(p.name for p in root.iterdir() if p.is_dir()))
        crops = bundle_crops(bundle, [decode_image(s.image.read_bytes(), s.image.name) for s in samples])
        sites[name] = (adapter.features(crops), [s.label for s in samples])
    # choosing (val): home figures on the bundle's validation cells; reporting (test): on its held-back reference
    home_set, home_labels = adapter.reference, adapter.reference_labels
    if split == "val":
        home_set, home_labels = adapter.calibration, adapter.calibration_labels
    base_home = home_figures(mean_probs(adapter.heads, home_set, adapter.base), home_labels, adapter.names)
    rows = []
    for k in ks:
        row: dict = {"k": k, "home_base": base_home}
        home, seconds = [], []
        for name, (features, labels) in sites.items():
            types = [group_of(label, adapter.classes) for label in labels]
            scores = []
            for draw in range(draws):
                adapt, test = halves(types, draw)
                if split == "val":
                    inner, outer = halves([types[i] for i in adapt], draw + 10)
                    adapt, test = adapt[inner], adapt[outer]
                rng = np.random.default_rng(draw + 100)
                pick = np.array(
                    [i for t in sorted(set(types)) for i in rng.permutation([j for j in adapt if types[j] == t])[:k]]
                )
                started = time.perf_counter()
                chosen = allowed_mask([labels[i] for i in pick], adapter.classes)
                weights = adapter.fit([f[pick] for f in features], chosen)
                seconds.append(time.perf_counter() - started)
                allowed, test_types = allowed_mask([labels[i] for i in test], adapter.classes), [types[i] for i in test]
                test_features = [f[test] for f in features]
                before = site_figures(mean_probs(adapter.heads, test_features, adapter.base), allowed, test_types,
                                      adapter.names)  # fmt: skip
                after = site_figures(mean_probs(adapter.heads, test_features, weights), allowed, test_types,
                                     adapter.names)  # fmt: skip
                scores.append((before[0], after[0], before[1], after[1]))
                home.append(home_figures(mean_probs(adapter.heads, home_set, weights), home_labels, adapter.names))
            row[name] = np.mean(scores, axis=0).round(3).tolist()
        row["home_adapted"] = np.mean(home, axis=0).round(3).tolist()
        row["fit_seconds"] = round(float(np.mean(seconds)), 1)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--k", default="5,10,20,50", help="corrected cells per type")
    parser.add_argument("--replay-weight", type=float, default=DEFAULT_SETTINGS.replay_weight)
    parser.add_argument("--anchor", type=float, default=DEFAULT_SETTINGS.anchor)
    parser.add_argument("--steps", type=int, default=DEFAULT_SETTINGS.steps)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    settings = FitSettings(steps=args.steps, replay_weight=args.replay_weight, anchor=args.anchor)
    print("| cells per type | dataset1 base -> adapted | dataset2 base -> adapted "
          "| called blast d1 / d2 (base -> adapted) | home F1 | blast sens | blast prec | fit (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in curve(args.bundle, args.split, [int(k) for k in args.k.split(",")], settings, data=args.data):
        d1, d2, home, base = row["dataset1"], row["dataset2"], row["home_adapted"], row["home_base"]
        print(
            f"| {row['k']} | {d1[0]:.3f} -> {d1[1]:.3f} | {d2[0]:.3f} -> {d2[1]:.3f} | {d1[2]:.3f} -> {d1[3]:.3f} / "
            f"{d2[2]:.3f} -> {d2[3]:.3f} | {base[0]:.3f} -> {home[0]:.3f} | {base[1]:.3f} -> {home[1]:.3f} | "
            f"{base[2]:.3f} -> {home[2]:.3f} | {row['fit_seconds']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
