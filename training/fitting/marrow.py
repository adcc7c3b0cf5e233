"""The marrow bundle's data: one class list over the blood and marrow sets, cell crops cut as
the count path cuts them, and the training of its classifiers from those crops.

    python -m training.marrow crops --out /work/exp/crops          # once: every cell, every split
    python -m training.marrow stage2 --crops DIR --arch ARCH --out DIR [--init STATE]
    python -m training.marrow stage1 --crops DIR --txl DIR --out DIR [--init STATE]

Splits: each set's own 70/10/20 image-wise split (``split_samples``, seed 0), so no test cell
of either set is trained on or chosen with. zheng2018_wbc is never read here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch

from edge.engines.bundle import ClassSpec
from edge.engines.graphs import build_classifier
from training.data.cells import cell_crop
from training.data.readers import read_yolo
from training.data.splits import SETS, cell_splits
from training.fitting.augment import AUGMENTS, STAIN_ROBUST
from training.fitting.loop import CellDataset, Recipe, train_classifier
from training.fitting.stage1 import NOT_COUNTABLE, Stage1Set
from training.members.norms import group_norm

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"

# Bundle classes in output order; every data set's own code is an alias, so `evaluate cells`
# reads each set's folders as they are.
MARROW_CLASSES: list[ClassSpec] = [
    ClassSpec(
        name="blast",
        role="key",
        aliases=["BLA"],
        description="blast, lineage not resolved (myeloblast or lymphoblast): acute leukaemia rule",
    ),
    ClassSpec(name="promyelocyte", role="key", aliases=["PMY", "PMO"], description="AML M3 flag"),
    ClassSpec(name="neutrophilic_myelocyte", role="wbc", aliases=["MY"]),
    ClassSpec(name="neutrophilic_metamyelocyte", role="wbc", aliases=["MMY"]),
    ClassSpec(name="neutrophilic_band", role="wbc", aliases=["BNE"]),
    ClassSpec(name="neutrophilic_segmented", role="wbc", aliases=["SNE", "NGS"]),
    ClassSpec(name="eosinophil", role="wbc", aliases=["EO", "EOS"]),
    ClassSpec(name="basophil", role="wbc", aliases=["BA"]),
    ClassSpec(name="lymphocyte", role="wbc", aliases=["LY", "LYT"]),
    ClassSpec(name="monocyte", role="wbc", aliases=["MO", "MON"]),
    ClassSpec(name="erythroblast", role="wbc", aliases=["ERB"]),
    ClassSpec(
        name="not_countable",
        role="not_countable",
        aliases=["NIF", "ART", "PLATELET"],
        description="not identifiable, artefact or damaged cell, platelet: never counted",
    ),
]
CLASS_NAMES = [c.name for c in MARROW_CLASSES]
CODE_TO_CLASS = {alias: i for i, c in enumerate(MARROW_CLASSES) for alias in c.aliases}
NOT_COUNTABLE_CODES = {"NIF", "ART", "PLATELET"}
CACHE_SIDE = 184  # 128 px model input / 0.7 (the smallest random crop)
CROP_MARGIN = 0.5  # side = 1.5 x box: the cell at 128 px, little of a set-specific surround


def build_crops(data: Path, out: Path, side: int = CACHE_SIDE, margin: float = CROP_MARGIN) -> dict:
    """Every cell of both sets cut as the count path cuts it, one npz per split."""
    out.mkdir(parents=True, exist_ok=True)
    per_split: dict[str, dict[str, list]] = {
        s: {"images": [], "codes": [], "sets": [], "paths": []} for s in ("train", "val", "test")
    }
    for name in SETS:
        splits = cell_splits(data, name)
        for split, samples in splits.items():

            def one(sample):
                image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
                return cell_crop(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), side, margin)

            with ThreadPoolExecutor(2) as pool:
                crops = list(pool.map(one, samples))
            bucket = per_split[split]
            bucket["images"] += crops
            bucket["codes"] += [s.label for s in samples]
            bucket["sets"] += [name] * len(samples)
            bucket["paths"] += [str(s.image) for s in samples]
    summary = {}
    for split, bucket in per_split.items():
        np.savez(
            out / f"{split}.npz",
            images=np.stack(bucket["images"]),
            codes=np.array(bucket["codes"]),
            sets=np.array(bucket["sets"]),
            paths=np.array(bucket["paths"]),
        )
        summary[split] = dict(
            sorted(Counter(f"{s}/{c}" for s, c in zip(bucket["sets"], bucket["codes"], strict=True)).items())
        )
        log.info("%s: %d crops", split, len(bucket["codes"]))
    (out / "summary.json").write_text(json.dumps({"side": side, "margin": margin, "counts": summary}, indent=1))
    return summary


def load_crops(folder: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(folder / f"{split}.npz") as data:
        return {k: data[k] for k in data.files}


def stage2_labels(codes: np.ndarray) -> np.ndarray:
    return np.array([CODE_TO_CLASS[str(c)] for c in codes])


def init_from(network: torch.nn.Module, state_path: Path) -> list[str]:
    """Load every tensor whose name and shape match (a checkpoint of this project, e.g. another
    bundle's member); the new head starts random. Returns the names left at random init."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    own = network.state_dict()
    kept = OrderedDict((k, v) for k, v in state.items() if k in own and own[k].shape == v.shape)
    kept._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]  # MNASNet checks its version
    network.load_state_dict(kept, strict=False)
    return sorted(set(own) - set(kept))


IMAGENET = "imagenet"  # --init imagenet: the packaged ImageNet weights (training/pretrained.py)


def initialise(network: torch.nn.Module, arch: str, init: str | Path | None) -> dict:
    """Start a network from ``init``: random (None), the packaged ImageNet weights (``imagenet``) or a
    checkpoint of this project. Returns what run.json records about it."""
    if init is None:
        return {}
    if str(init) == IMAGENET:
        from training.members.pretrained import load_imagenet, record

        return {"pretrained": record(load_imagenet(network, arch))}
    log.info("init from %s; random: %s", init, init_from(network, Path(init)))
    return {}


def _recipe(args) -> Recipe:
    return Recipe(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=32,
        t_max=None,
        weight_decay=args.weight_decay,
        label_smoothing=0.1,
        resolution=args.size,
        seed=args.seed,
        class_balanced=getattr(args, "balanced", False),
        ema=args.ema,
    )


def _write_run(out: Path, args, recipe: Recipe, names: list[str], counts: dict, **extra) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "arch": args.arch,
        "classes": names,
        "data": str(args.crops),
        "init": str(args.init) if args.init else "random",
        "recipe": asdict(recipe),
        "augment": {"name": args.augment} | asdict(AUGMENTS[args.augment]),
        "counts": counts,
    } | extra
    (out / "run.json").write_text(json.dumps(record, indent=1))


def _check_side(side: int, size: int) -> None:
    """The smallest random crop must not be upsampled: finer input would add no detail."""
    smallest = STAIN_ROBUST.crop_scale[0]
    if size > smallest * side + 1:
        raise SystemExit(f"--size {size} needs crops cached at {round(size / smallest)} px or more (these: {side})")


def train_stage2(args) -> dict:
    train, val = (without_codes(load_crops(args.crops, s), args.leave_out) for s in ("train", "val"))
    _check_side(train["images"].shape[1], args.size)
    recipe = _recipe(args)
    network = build_classifier(args.arch, len(CLASS_NAMES))
    if args.norm == "group":
        group_norm(network)
    pretrained = initialise(network, args.arch, args.init)
    counts = {"train": len(train["codes"]), "val": len(val["codes"])}
    extra = {"left_out_codes": args.leave_out} if args.leave_out else {}
    _write_run(args.out, args, recipe, CLASS_NAMES, counts, norm=args.norm, **pretrained, **extra)
    return train_classifier(
        network,
        CellDataset(train["images"], stage2_labels(train["codes"]), args.size, AUGMENTS[args.augment], seed=args.seed),
        CellDataset(val["images"], stage2_labels(val["codes"]), args.size, None),
        CLASS_NAMES,
        recipe,
        args.out,
    )


def without_codes(crops: dict[str, np.ndarray], codes: list[str]) -> dict[str, np.ndarray]:
    """The crops minus those of ``codes`` (e.g. NIF: left to stage 1 alone, not taught to stage 2)."""
    keep = ~np.isin(crops["codes"], codes)
    return {k: v[keep] for k, v in crops.items()}


def stage1_set(
    crops: dict[str, np.ndarray], txl_records, rng: np.random.Generator, neighbours: Iterable[tuple] = ()
) -> tuple:
    """Countable: white cells of both sets. Not countable: NIF, ART, platelets, white cells cut
    by the border or defocused (every fourth each), up to three RBC and platelet boxes per TXL field,
    cut at the cells' cached side so every crop of the set has one scale. ``neighbours``: (crop, code,
    kind) of cells among neighbours (``training.data.neighbours``), labelled as their code says."""
    side = crops["images"].shape[1]
    built = Stage1Set()
    cells = zip(crops["images"], crops["codes"], crops["sets"], strict=True)
    for image, code, name in itertools.chain(cells, ((c, k, f"neighbours_{kind}") for c, k, kind in neighbours)):
        if str(code) in NOT_COUNTABLE_CODES:
            built.add(image, NOT_COUNTABLE, f"{name}/{code}")
        else:
            built.white_cell(image, f"{name}/wbc")
    built.hard_cases(rng)
    for record in txl_records:
        field = cv2.cvtColor(cv2.imread(str(record.image)), cv2.COLOR_BGR2RGB)
        others = [b for b in record.boxes if b.label != "WBC"]
        if len(others) > 3:
            others = [others[i] for i in rng.choice(len(others), 3, replace=False)]
        built.field_boxes(field, others, side, CROP_MARGIN)
    return built.result()


def _neighbours(fields: int, split: str, side: int, rng: np.random.Generator) -> Iterable[tuple]:
    """Cells among neighbours from matek_bm's ``split``: ``fields`` composed fields and mosaics for the training
    split, as many per cell for the others."""
    if not fields:
        return ()
    from training.data.compose import cut_patch, matek_splits
    from training.data.grids import load_cells
    from training.data.neighbours import neighbour_crops

    splits = matek_splits()
    samples = splits[split]
    count = round(fields * len(samples) / len(splits["train"]))
    tiles = load_cells(codes=sorted({s.label for s in samples}), split=split)  # every image read once
    log.info("stage 1 %s: %d fields of cells among neighbours", split, count)
    return neighbour_crops([cut_patch(t.image, t.code) for t in tiles], tiles, count, side, CROP_MARGIN, rng)


def train_stage1(args) -> dict:
    rng = np.random.default_rng(args.seed)
    txl = read_yolo(args.txl)
    data, sources = {}, {}
    for split in ("train", "val", "test"):
        records = [r for r in txl if r.split == split]
        crops = load_crops(args.crops, split)
        _check_side(crops["images"].shape[1], args.size)  # before the TXL fields are read
        neighbours = _neighbours(args.neighbours, split, crops["images"].shape[1], rng)
        data[split] = stage1_set(crops, records, rng, neighbours)
        sources[split] = data[split][2]
        log.info("stage 1 %s: %s", split, sources[split])
    recipe = _recipe(args)
    names = ["not_countable", "countable"]
    network = build_classifier(args.arch, 2)
    pretrained = initialise(network, args.arch, args.init)
    _write_run(args.out, args, recipe, names, {k: len(v[1]) for k, v in data.items()}, sources=sources, **pretrained)
    for split in ("val", "test"):  # kept for checkpoint choice (val) and held-back metrics (test)
        images, labels, _ = data[split]
        np.savez_compressed(args.out / f"{split}_set.npz", images=np.stack(images), labels=np.array(labels))
    train = CellDataset(data["train"][0], data["train"][1], args.size, AUGMENTS[args.augment], seed=args.seed)
    val = CellDataset(data["val"][0], data["val"][1], args.size, None)
    return train_classifier(network, train, val, names, recipe, args.out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    crops = sub.add_parser("crops", help="cut every cell of pbc_cells and matek_bm once")
    crops.add_argument("--data", type=Path, default=DATA)
    crops.add_argument("--out", type=Path, required=True)
    crops.add_argument(
        "--side", type=int, default=CACHE_SIDE, help="cached crop side: input size / 0.7 (184: 128 px, 229: 160 px)"
    )
    for name in ("stage2", "stage1"):
        p = sub.add_parser(name)
        p.add_argument("--crops", type=Path, required=True)
        p.add_argument("--arch", default="mobilenet_v3_small")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--init", help="a state dict of this project, or 'imagenet' (EfficientNet-Lite members)")
        p.add_argument("--epochs", type=int, default=8)
        p.add_argument("--lr", type=float, default=1e-3)
        p.add_argument("--weight-decay", type=float, default=1e-5)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--size", type=int, default=128, help="input side in px (at most 0.7 x the crops' cached side)")
        p.add_argument("--augment", choices=sorted(AUGMENTS), default="stain-robust", help="training augmentation")
        p.add_argument(
            "--ema", type=float, help="validate and keep a moving average of the weights with this decay (e.g. 0.998)"
        )
        if name == "stage1":
            p.add_argument("--txl", type=Path, default=DATA / "txl_pbc_detection")
            p.add_argument(
                "--neighbours",
                type=int,
                default=0,
                metavar="FIELDS",
                help="add matek cells among neighbours: this many composed fields and mosaics (training split)",
            )
        else:
            p.add_argument(
                "--norm", choices=["batch", "group"], default="batch", help="group: batch norm swapped for group norm"
            )
            p.add_argument("--balanced", action="store_true", help="class-balanced loss (weights 1/frequency)")
            p.add_argument(
                "--leave-out", nargs="*", default=[], metavar="CODE", help="dataset codes stage 2 never sees (e.g. NIF)"
            )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "crops":
        build_crops(args.data, args.out, side=args.side)
        return
    torch.set_num_threads(args.threads)
    result = train_stage2(args) if args.command == "stage2" else train_stage1(args)
    log.info("best %s", result.get("best_val_macro_f1"))


if __name__ == "__main__":
    main()
