"""A member's head fitted to a site's corrected cells without forgetting what it knew.

The loss (numpy, full batch, Adam; a head is a few thousand parameters and the features are
computed once, so a fit takes seconds on two cores):
- the site's cells: minus the log of the summed probability of the classes their label allows
  (a five-part group such as "neutrophil" allows four marrow classes), each label weighted
  equally whatever its number of cells;
- the replay cells (the bundle's own training cells): the base head's probabilities are the
  targets (distillation), so what the base called blast on its home cells it still calls blast;
- the distance of the new head from the base head (an L2 anchor), so a handful of cells moves it
  only as far as they must.
Why this and not the alternatives: docs/site-adaptation.md (retraining the head on the site's cells
alone forgets blasts; re-estimating batch-norm statistics destroys them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FitSettings:
    # chosen on zheng2018 adaptation halves split again (k-fold inside them) and the matek validation
    # cells: docs/site-adaptation.md
    steps: int = 400
    lr: float = 0.01
    replay_weight: float = 10.0  # distillation on the replay cells, against the site loss
    anchor: float = 1e-4  # L2 distance from the base head, per parameter
    seed: int = 0
    guard: tuple[str, ...] = ("blast",)  # replay cells of these classes weigh guard_weight in the distillation
    guard_weight: float = 3.0


DEFAULT_SETTINGS = FitSettings()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def probabilities(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return softmax(features @ weight.T + bias)


def fit_head(
    site: np.ndarray,
    allowed: np.ndarray,
    replay: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    settings: FitSettings = DEFAULT_SETTINGS,
    replay_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """New (weight, bias) and the loss by step.

    ``site`` (n, d) features of the site's cells, ``allowed`` (n, classes) bool: the classes each cell's
    label allows; ``replay`` (m, d) features of the bundle's replay cells; ``weight`` (classes, d) and
    ``bias`` the base head; ``replay_weights`` (m,): each replay cell's weight (mean 1 is the plain distillation).
    """
    site, replay = site.astype(np.float32), replay.astype(np.float32)
    allowed = allowed.astype(bool)
    if not len(site) or not allowed.any(axis=1).all():
        raise ValueError("every site cell needs at least one allowed class")
    teacher = probabilities(replay, weight, bias)
    per_replay = np.ones(len(replay), np.float32) if replay_weights is None else replay_weights.astype(np.float32)
    per_replay = per_replay / len(replay)
    # each label (its allowed set) weighs the same in total
    _, label_of = np.unique(allowed, axis=0, return_inverse=True)
    label_of = label_of.reshape(-1)
    per_cell = 1.0 / np.bincount(label_of)[label_of]
    per_cell = (per_cell / per_cell.sum()).astype(np.float32)
    w, b = weight.astype(np.float32).copy(), bias.astype(np.float32).copy()
    params = [w, b]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    history = []
    for step in range(1, settings.steps + 1):
        p_site = probabilities(site, w, b)
        inside = np.where(allowed, p_site, 0.0).sum(axis=1)
        site_loss = float(-(per_cell * np.log(np.maximum(inside, 1e-12))).sum())
        # d(-log sum_{c in A} p_c)/dz_k = p_k - [k in A] p_k / sum_A
        g_site = (p_site - np.where(allowed, p_site, 0.0) / np.maximum(inside, 1e-12)[:, None]) * per_cell[:, None]
        p_replay = probabilities(replay, w, b)
        replay_loss = float(-(per_replay * (teacher * np.log(np.maximum(p_replay, 1e-12))).sum(axis=1)).sum())
        g_replay = settings.replay_weight * (p_replay - teacher) * per_replay[:, None]
        grad_w = g_site.T @ site + g_replay.T @ replay + 2 * settings.anchor * (w - weight)
        grad_b = g_site.sum(axis=0) + g_replay.sum(axis=0) + 2 * settings.anchor * (b - bias)
        for param, grad, (m, v) in zip(params, (grad_w, grad_b), moments, strict=True):
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            param -= settings.lr * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)
        history.append(site_loss + settings.replay_weight * replay_loss)
    return w, b, history
