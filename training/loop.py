"""Classifier training: the paper's recipe by default, resumable checkpoints, seeds, progress bars."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from build_engines.profiles import NormalisedInput
from training.augment import AugmentConfig, augment_cell, eval_cell
from training.metrics import classification_report

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """Defaults are the seed paper's (stage 2; stage 1 uses t_max=30). They fine-tune ImageNet
    weights; from random initialisation use a larger lr (see training/README.md)."""

    epochs: int = 50
    lr: float = 1e-5
    batch_size: int = 32
    t_max: int | None = 50  # cosine annealing period in epochs; None: the number of epochs
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    resolution: int = 224
    seed: int = 0
    workers: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_images(paths: Sequence[Path], short_side: int, threads: int = 2) -> list[np.ndarray]:
    """Decode and downscale once, so epochs cost compute, not JPEG decoding."""

    def one(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path}: cannot be read")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        scale = short_side / min(image.shape[:2])
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        return image

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, paths))


class CellDataset(Dataset):
    """uint8 HWC crops and integer labels; augmented when ``augment`` is given."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[int],
        size: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    ):
        self.images, self.labels, self.size, self.augment = list(images), np.asarray(labels), size, augment
        self.rng = np.random.default_rng(seed)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image, self.rng)
        if self.augment is not None:
            crop = augment_cell(image, self.size, self.rng, self.augment)
        else:
            crop = eval_cell(image, self.size)
        return torch.from_numpy(crop), int(self.labels[index])


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels of a whole dataset, in order."""
    model.eval()
    probs, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        probs.append(torch.softmax(model(x), dim=1).numpy())
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def train_classifier(
    network: nn.Module,
    train_set: CellDataset,
    val_set: CellDataset,
    class_names: list[str],
    recipe: Recipe,
    out_dir: Path,
    resume: bool = True,
) -> dict:
    """Train ``network`` (raw logits on normalised NCHW) on uint8 NHWC batches.

    Writes ``last.pt`` (everything needed to resume) after every epoch, ``best.pt`` (the
    network's state dict, best validation macro-F1) and ``history.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(recipe.seed)
    model = nn.Sequential(NormalisedInput(), network)
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=recipe.t_max or recipe.epochs)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    history: list[dict] = []
    start, best = 0, -1.0
    last = out_dir / "last.pt"
    if resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        train_set.rng = state["data_rng"]
        start, best, history = state["epoch"] + 1, state["best"], state["history"]
        generator_state = state["shuffle_rng"]
        log.info("resuming %s at epoch %d (best val macro-F1 %.4f)", out_dir, start, best)
    else:
        generator_state = None
    generator = torch.Generator().manual_seed(recipe.seed)
    if generator_state is not None:
        generator.set_state(generator_state)
    for epoch in range(start, recipe.epochs):
        model.train()
        t0 = time.time()
        loader = DataLoader(
            train_set, batch_size=recipe.batch_size, shuffle=True, generator=generator, num_workers=recipe.workers
        )
        running, seen = 0.0, 0
        bar = tqdm(loader, desc=f"{out_dir.name} {epoch + 1}/{recipe.epochs}", leave=False, mininterval=5)
        for x, y in bar:
            loss = loss_fn(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            running += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        scheduler.step()
        probs, labels = predict(model, val_set)
        report = classification_report(labels, probs, class_names)
        entry = {
            "epoch": epoch + 1,
            "train_loss": running / max(seen, 1),
            "val_accuracy": report["accuracy"],
            "val_macro_f1": report["macro_f1"],
            "lr": scheduler.get_last_lr()[0],
            "seconds": time.time() - t0,
        }
        history.append(entry)
        log.info("%s epoch %d: %s", out_dir.name, epoch + 1, json.dumps({k: round(v, 4) for k, v in entry.items()}))
        if report["macro_f1"] > best:
            best = report["macro_f1"]
            torch.save(network.state_dict(), out_dir / "best.pt")
        torch.save(
            {
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "data_rng": train_set.rng,
                "shuffle_rng": generator.get_state(),
                "epoch": epoch,
                "best": best,
                "history": history,
                "recipe": asdict(recipe),
            },
            last,
        )
        (out_dir / "history.json").write_text(json.dumps({"recipe": asdict(recipe), "history": history}, indent=1))
    return {"best_val_macro_f1": best, "history": history}
