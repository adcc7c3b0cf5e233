"""Train one classifier on folder-per-class crops.

python -m training.train_cells --data DIR --classes BA,BNE,... --arch shufflenet_v2_x1_0 --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from edge.engines.graphs import build_classifier
from training.data.readers import read_cell_folders, split_samples
from training.fitting.augment import AugmentConfig
from training.fitting.loop import CellDataset, Recipe, load_images, train_classifier


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classes", required=True, help="comma-separated folder names, in bundle order")
    parser.add_argument("--arch", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--lr", type=float, default=Recipe.lr)
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    parser.add_argument("--t-max", type=int, default=None)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--resolution", type=int, default=Recipe.resolution)
    parser.add_argument("--seed", type=int, default=0, help="model init and augmentation")
    parser.add_argument("--split-seed", type=int, default=0, help="the 70/10/20 split")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's choice")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per class (smoke runs)")
    parser.add_argument("--init", type=Path, help="start from this state dict (a local checkpoint) instead of random")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    names = args.classes.split(",")
    samples = read_cell_folders(args.data, names)
    if args.limit:
        samples = [s for n in names for s in [x for x in samples if x.label == n][: args.limit]]
    splits = split_samples(samples, seed=args.split_seed)
    recipe = Recipe(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        t_max=args.t_max,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        resolution=args.resolution,
        seed=args.seed,
    )
    short_side = int(args.resolution / AugmentConfig().crop_scale[0]) + 1
    index = {n: i for i, n in enumerate(names)}
    sets = {}
    for split in ("train", "val"):
        items = splits[split]
        images = load_images([s.image for s in items], short_side)
        sets[split] = CellDataset(
            images,
            [index[s.label] for s in items],
            args.resolution,
            AugmentConfig() if split == "train" else None,
            seed=args.seed,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "split.json").write_text(
        json.dumps({k: [str(s.image) for s in v] for k, v in splits.items()}, indent=0)
    )
    (args.out / "run.json").write_text(
        json.dumps(
            {
                "arch": args.arch,
                "classes": names,
                "data": str(args.data),
                "init": str(args.init) if args.init else "random",
                "recipe": asdict(recipe),
                "counts": {k: len(v) for k, v in splits.items()},
            },
            indent=1,
        )
    )
    network = build_classifier(args.arch, len(names))
    if args.init:
        network.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    return train_classifier(network, sets["train"], sets["val"], names, recipe, args.out)


if __name__ == "__main__":
    main()
