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

from edge.engines.graphs import NormalisedInput
from training.evaluation.metrics import classification_report
from training.fitting.augment import AugmentConfig, augment_cell, eval_cell

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
    class_balanced: bool = False  # loss weights 1/frequency (mean 1): a rare class costs as much as a common one
    ema: float | None = None  # decay of an exponential moving average of the weights; validated and kept instead


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RunBook:
    """What every training loop shares: resuming from ``last.pt``, the per-epoch log and
    ``history.json``, ``best.pt`` (the best validation ``metric``) and ``last.pt``."""

    def __init__(self, out_dir: Path, recipe: Recipe, model: nn.Module, optimiser, scheduler, metric: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.recipe, self.metric = out_dir, recipe, metric
        self.model, self.optimiser, self.scheduler = model, optimiser, scheduler
        self.start, self.best, self.history = 0, -1.0, []
        self.last = out_dir / "last.pt"

    def resume(self) -> dict | None:
        """Restore model, optimiser, scheduler and torch's random state; the loop's own extras are returned."""
        if not self.last.is_file():
            return None
        state = torch.load(self.last, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.start, self.best, self.history = state["epoch"] + 1, state["best"], state["history"]
        log.info("resuming %s at epoch %d (best %s %.4f)", self.out_dir, self.start, self.metric, self.best)
        return state["extra"]

    def end_epoch(self, entry: dict, best_module: nn.Module, extra: dict) -> None:
        self.history.append(entry)
        rounded = {k: round(v, 4) for k, v in entry.items()}
        log.info("%s epoch %d: %s", self.out_dir.name, entry["epoch"], json.dumps(rounded))
        if entry[self.metric] > self.best:
            self.best = entry[self.metric]
            torch.save(best_module.state_dict(), self.out_dir / "best.pt")
        state = {
            "model": self.model.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch": entry["epoch"] - 1,
            "best": self.best,
            "history": self.history,
            "recipe": asdict(self.recipe),
            "extra": extra,
        }
        torch.save(state, self.last)
        summary = {"recipe": asdict(self.recipe), "history": self.history}
        (self.out_dir / "history.json").write_text(json.dumps(summary, indent=1))


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


def balanced_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Loss weight per class, 1/frequency scaled to mean 1 over the classes present (absent: 0)."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return torch.tensor(inverse / inverse[counts > 0].mean(), dtype=torch.float32)


def _ema(model: nn.Module, decay: float | None) -> nn.Module | None:
    """timm's weight average (parameters and batch-norm buffers); its copy is what is validated and kept."""
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


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
    network's state dict, best validation macro-F1; the averaged weights when ``recipe.ema``)
    and ``history.json``.
    """
    seed_everything(recipe.seed)
    model = nn.Sequential(NormalisedInput(), network)
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=recipe.t_max or recipe.epochs)
    weight = balanced_weights(train_set.labels, len(class_names)) if recipe.class_balanced else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.label_smoothing)
    book = RunBook(out_dir, recipe, model, optimiser, scheduler, metric="val_macro_f1")
    generator = torch.Generator().manual_seed(recipe.seed)
    ema = _ema(model, recipe.ema)
    extra = book.resume() if resume else None
    if extra is not None:
        train_set.rng = extra["data_rng"]
        generator.set_state(extra["shuffle_rng"])
        if ema is not None:
            ema.module.load_state_dict(extra["ema"])
    for epoch in range(book.start, recipe.epochs):
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
            if ema is not None:
                ema.update(model)
            running += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        scheduler.step()
        scored = model if ema is None else ema.module
        probs, labels = predict(scored, val_set)
        report = classification_report(labels, probs, class_names)
        entry = {
            "epoch": epoch + 1,
            "train_loss": running / max(seen, 1),
            "val_accuracy": report["accuracy"],
            "val_macro_f1": report["macro_f1"],
            "lr": scheduler.get_last_lr()[0],
            "seconds": time.time() - t0,
        }
        state = {"data_rng": train_set.rng, "shuffle_rng": generator.get_state()}
        if ema is not None:
            state["ema"] = ema.module.state_dict()
        book.end_epoch(entry, scored[1], state)
    return {"best_val_macro_f1": book.best, "history": book.history}
