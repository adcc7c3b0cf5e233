"""Batch-norm recalibration and the choice of checkpoint by validation score.

Trained from random initialisation with small batches (4 fields for the detector, padded to
one size), the running batch-norm statistics lag behind the weights and validation scores
jump from epoch to epoch. Re-estimating them over training inputs, as the model sees them at
inference (one field at a time; crops as evaluated), removes most of that noise.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, inputs: Iterable, forward: Callable[[nn.Module, object], object]) -> None:
    """Replace every batch-norm layer's running mean and variance by their exact average over
    ``inputs``; the rest of the model stays in eval mode (a detector needs no targets then)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    for item in inputs:
        forward(model, item)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        m.eval()


def _load(model: nn.Module, state: dict) -> nn.Module:
    """A best.pt state dict, or a last.pt training state (the model alone, or wrapped after the
    input normalisation as the classifier loop trains it)."""
    from edge.engines.graphs import NormalisedInput

    if "optimiser" not in state:
        model.load_state_dict(state)
    elif "0.mean" in state["model"]:  # decided by keys: a failed load can leave MNASNet rebuilt
        nn.Sequential(NormalisedInput(), model).load_state_dict(state["model"])
    else:
        model.load_state_dict(state["model"])
    return model.eval()


def choose_checkpoint(
    build: Callable[[], nn.Module],
    run_dir: Path,
    score: Callable[[nn.Module], float],
    calibration: Callable[[], Iterable],
    forward: Callable[[nn.Module, object], object],
) -> tuple[dict, dict]:
    """Best of best.pt and last.pt, each as trained and recalibrated, by ``score`` (validation).

    Returns the chosen state dict and a record of every candidate's score.
    """
    record: dict[str, float] = {}
    chosen: tuple[float, dict] | None = None
    for name in ("best.pt", "last.pt"):
        path = run_dir / name
        if not path.is_file():
            continue
        state = torch.load(path, map_location="cpu", weights_only=False)
        for recalibrated in (False, True):
            model = _load(build(), state)
            if recalibrated:
                recalibrate_batch_norm(model, calibration(), forward)
            value = score(model)
            label = f"{name}{' recalibrated' if recalibrated else ''}"
            record[label] = value
            log.info("%s %s: validation %.4f", run_dir.name, label, value)
            if chosen is None or value > chosen[0]:
                # deepcopy keeps the state dict's _metadata: MNASNet refuses a state without its version
                chosen = (value, copy.deepcopy(model.state_dict()))
    if chosen is None:
        raise FileNotFoundError(f"{run_dir}: neither best.pt nor last.pt")
    best_label = max(record, key=record.get)
    return chosen[1], {"candidates": record, "chosen": best_label}
