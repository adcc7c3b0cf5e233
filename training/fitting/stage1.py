"""Stage 1 (countable vs not) from public data, and its training.

No public set of crushed or degenerated marrow cells exists here. The not-countable class
is built honestly from what does exist, each source counted in the bundle's manifest:
- RBC and platelet boxes of the TXL-PBC fields, cut as the appliance cuts detector boxes;
- PBC platelet crops;
- white cells cut by the field border (the part beyond the border repeats the edge, as the
  appliance's crop does);
- white cells strongly defocused (Gaussian) or motion-blurred.
Countable: PBC white cells of the ten classes and TXL WBC boxes.

    python -m training.stage1 --pbc DIR --txl DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch

from edge.analysis.crops import crop_cells
from edge.engines.graphs import build_classifier
from training.data.pbc import PBC_WBC
from training.data.readers import read_cell_folders, read_yolo, split_samples
from training.fitting.augment import AugmentConfig
from training.fitting.loop import CellDataset, Recipe, load_images, train_classifier

log = logging.getLogger(__name__)

NOT_COUNTABLE, COUNTABLE = 0, 1


def cut_by_border(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The field border runs through the cell: beyond it the edge column or row repeats."""
    out = image.copy()
    size = image.shape[0]
    cut = int(size * rng.uniform(0.3, 0.5))  # the cell sits near the centre: this cuts into it
    side = int(rng.integers(4))
    if side == 0:
        out[:, :cut] = out[:, cut : cut + 1]
    elif side == 1:
        out[:, size - cut :] = out[:, size - cut - 1 : size - cut]
    elif side == 2:
        out[:cut] = out[cut : cut + 1]
    else:
        out[size - cut :] = out[size - cut - 1 : size - cut]
    return out


def defocus(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(4.0, 8.0))
    length = int(rng.integers(15, 31))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    angle = rng.uniform(0, 180)
    rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    return cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6))


class Stage1Set:
    """The one stage-1 set builder: countable white cells, what is not countable, and the hard cases made
    from the white cells (every fourth cut by the field border, every fourth from the third defocused);
    each source counted for the bundle's manifest."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.labels: list[int] = []
        self.tally: Counter[str] = Counter()
        self._white: list[np.ndarray] = []

    def add(self, image: np.ndarray, label: int, source: str) -> None:
        self.images.append(image)
        self.labels.append(label)
        self.tally[source] += 1

    def white_cell(self, image: np.ndarray, source: str) -> None:
        """A countable white cell; it also gives the border-cut and defocused variants."""
        self.add(image, COUNTABLE, source)
        self._white.append(image)

    def hard_cases(self, rng: np.random.Generator) -> None:
        for image in self._white[::4]:
            self.add(cut_by_border(image, rng), NOT_COUNTABLE, "border_cut_wbc")
        for image in self._white[2::4]:
            self.add(defocus(image, rng), NOT_COUNTABLE, "defocused_wbc")

    def field_boxes(self, field: np.ndarray, boxes: list, side: int, margin: float) -> None:
        """Detector boxes of a field (readers' boxes with a label), cut as the appliance cuts them: WBC
        countable, any other label (RBC, platelet) not."""
        if not boxes:
            return
        coords = np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float32)
        for crop, box in zip(crop_cells(field, coords, side, margin), boxes, strict=True):
            if box.label == "WBC":
                self.add(crop, COUNTABLE, "txl_wbc")
            else:
                self.add(crop, NOT_COUNTABLE, f"txl_{box.label.lower()}")

    def result(self) -> tuple[list[np.ndarray], list[int], dict[str, int]]:
        return self.images, self.labels, dict(sorted(self.tally.items()))


def build_stage1(
    pbc_root: Path,
    txl_root: Path,
    side: int,
    margin: float,
    seed: int = 0,
    rbc_per_field: int = 3,
) -> tuple[dict[str, tuple[list[np.ndarray], list[int]]], dict[str, dict[str, int]]]:
    """Images and labels per split, and the count of each source per split (for the manifest).

    PBC uses the same image-wise split (seed) as stage 2, TXL its own splits, so no test
    image of either set trains stage 1.
    """
    rng = np.random.default_rng(seed)
    wbc = split_samples(read_cell_folders(pbc_root, list(PBC_WBC)), seed=seed)
    platelets = split_samples(read_cell_folders(pbc_root, ["PLATELET"]), seed=seed)
    fields = read_yolo(txl_root)
    out: dict[str, tuple[list[np.ndarray], list[int]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        built = Stage1Set()
        pbc_wbc = load_images([s.image for s in wbc[split]], side)
        for image in pbc_wbc:
            built.white_cell(cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA), "pbc_wbc")
        for image in load_images([s.image for s in platelets[split]], side):
            built.add(cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA), NOT_COUNTABLE, "pbc_platelet")
        built.hard_cases(rng)
        for record in (r for r in fields if r.split == split):
            field = cv2.cvtColor(cv2.imread(str(record.image)), cv2.COLOR_BGR2RGB)
            rbc = [b for b in record.boxes if b.label == "RBC"]
            if len(rbc) > rbc_per_field:
                rbc = [rbc[i] for i in rng.choice(len(rbc), rbc_per_field, replace=False)]
            built.field_boxes(field, [b for b in record.boxes if b.label != "RBC"] + rbc, side, margin)
        images, labels, tally = built.result()
        out[split] = (images, labels)
        counts[split] = tally
        log.info("stage 1 %s: %s", split, counts[split])
    return out, counts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Train the stage-1 countable head on public data.")
    parser.add_argument("--pbc", type=Path, required=True)
    parser.add_argument("--txl", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", default="mobilenet_v3_small")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--margin", type=float, default=1.2, help="crop margin of TXL boxes (as the appliance)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    side = int(args.resolution / AugmentConfig().crop_scale[0]) + 1
    data, counts = build_stage1(args.pbc, args.txl, side, args.margin, args.seed)
    recipe = Recipe(
        epochs=args.epochs,
        lr=args.lr,
        t_max=None,
        resolution=args.resolution,
        seed=args.seed,
        label_smoothing=0.05,
        weight_decay=1e-5,
    )
    names = ["not_countable", "countable"]
    train = CellDataset(*data["train"], args.resolution, AugmentConfig(), seed=args.seed)
    val = CellDataset(*data["val"], args.resolution, None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "run.json").write_text(
        json.dumps(
            {"arch": args.arch, "classes": names, "margin": args.margin, "recipe": asdict(recipe), "sources": counts},
            indent=1,
        )
    )
    for split in ("val", "test"):  # kept for checkpoint choice (val) and held-back metrics (test)
        images, labels = data[split]
        np.savez_compressed(args.out / f"{split}_set.npz", images=np.stack(images), labels=np.array(labels))
    return train_classifier(build_classifier(args.arch, 2), train, val, names, recipe, args.out)


if __name__ == "__main__":
    main()
