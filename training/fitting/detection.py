"""Detector training (torchvision RetinaNet) on annotated fields.

python -m training.detection --format yolo --data DIR --labels WBC --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from edge.engines.graphs import PROFILES, build_detector
from training.data.readers import FieldAnnotation, read_fields, split_samples
from training.evaluation.metrics import detection_report
from training.fitting.augment import AugmentConfig, colour_and_blur
from training.fitting.loop import Recipe, RunBook, seed_everything

log = logging.getLogger(__name__)


def field_targets(record: FieldAnnotation, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) and 1-based label ids of the wanted labels (0 is RetinaNet's background)."""
    index = {name: i + 1 for i, name in enumerate(labels)}
    kept = [b for b in record.boxes if b.label in index]
    boxes = np.array([[b.x1, b.y1, b.x2, b.y2] for b in kept], np.float32).reshape(-1, 4)
    return boxes, np.array([index[b.label] for b in kept], np.int64)


def flip_rotate_with_boxes(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    width = image.shape[1]
    boxes = boxes.copy()
    if rng.random() < 0.5:
        image = image[:, ::-1]
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    for _ in range(int(rng.integers(4))):  # 90 degrees counter-clockwise each
        width = image.shape[1]
        image = np.rot90(image)
        x1, y1, x2, y2 = boxes.T.copy()
        boxes = np.stack([y1, width - x2, y2, width - x1], axis=1)
    return np.ascontiguousarray(image), boxes


def load_field(record: FieldAnnotation) -> np.ndarray:
    image = cv2.imread(str(record.image), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{record.image}: cannot be read")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@torch.no_grad()
def predict_fields(model, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    model.eval()
    out = []
    for image in images:
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        result = model([x])[0]
        out.append((result["boxes"].numpy(), result["scores"].numpy()))
    return out


def train_detector(
    records: dict[str, list[FieldAnnotation]],
    labels: list[str],
    profile_name: str,
    recipe: Recipe,
    out_dir: Path,
    resume: bool = True,
    init: Path | None = None,
) -> dict:
    seed_everything(recipe.seed)
    model = build_detector(PROFILES[profile_name], num_classes=len(labels) + 1)
    if init is not None:
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    model.score_thresh = 0.01  # evaluation keeps low scores: AP needs the whole ranking
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=recipe.t_max or recipe.epochs)
    book = RunBook(out_dir, recipe, model, optimiser, scheduler, metric="val_ap50")
    rng = np.random.default_rng(recipe.seed)
    extra = book.resume() if resume else None
    if extra is not None:
        rng = extra["data_rng"]
    train = [(load_field(r), *field_targets(r, labels)) for r in records["train"]]
    val_images = [load_field(r) for r in records["val"]]
    val_truth = [field_targets(r, labels)[0] for r in records["val"]]
    augment = AugmentConfig()
    for epoch in range(book.start, recipe.epochs):
        model.train()
        t0 = time.time()
        order = rng.permutation(len(train))
        batches = [order[i : i + recipe.batch_size] for i in range(0, len(order), recipe.batch_size)]
        running = 0.0
        bar = tqdm(batches, desc=f"{out_dir.name} {epoch + 1}/{recipe.epochs}", leave=False, mininterval=5)
        for step, batch in enumerate(bar, start=1):
            images, targets = [], []
            for i in batch:
                image, boxes, ids = train[i]
                image, boxes = flip_rotate_with_boxes(colour_and_blur(image, rng, augment), boxes, rng)
                images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
                targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(ids)})
            losses = model(images, targets)
            loss = sum(losses.values())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            running += loss.item()
            bar.set_postfix(loss=f"{running / step:.4f}")
        scheduler.step()
        report = detection_report(predict_fields(model, val_images), val_truth)
        entry = {
            "epoch": epoch + 1,
            "train_loss": running / max(len(batches), 1),
            "val_ap50": report["ap50"],
            "val_coco_ap": report["coco_ap"],
            "lr": scheduler.get_last_lr()[0],
            "seconds": time.time() - t0,
        }
        book.end_epoch(entry, model, {"data_rng": rng})
    return {"best_val_ap50": book.best, "history": book.history}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=["yolo", "voc", "coco"], required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--labels", default="WBC", help="comma-separated labels to detect")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="lite")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="at most this many fields per split (smoke runs)")
    parser.add_argument("--init", type=Path, help="start from this state dict (a local checkpoint)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    records = read_fields(args.format, args.data)
    if all(r.split for r in records):  # the data set's own splits
        splits = {k: [r for r in records if r.split == k] for k in ("train", "val", "test")}
    else:
        splits = split_samples(records, key=lambda r: "all", seed=args.seed)
    if args.limit:
        splits = {k: v[: args.limit] for k, v in splits.items()}
    recipe = Recipe(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        t_max=None,
        weight_decay=args.weight_decay,
        seed=args.seed,
        resolution=PROFILES[args.profile].detector_min_size,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "run.json").write_text(
        json.dumps(
            {
                "profile": args.profile,
                "labels": args.labels.split(","),
                "data": str(args.data),
                "format": args.format,
                "init": str(args.init) if args.init else "random",
                "recipe": asdict(recipe),
                "counts": {k: len(v) for k, v in splits.items()},
            },
            indent=1,
        )
    )
    return train_detector(splits, args.labels.split(","), args.profile, recipe, args.out, init=args.init)


if __name__ == "__main__":
    main()
