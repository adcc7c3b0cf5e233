"""The head fit in numpy: its gradient, what it learns from the site and what it keeps from the replay."""

from __future__ import annotations

import numpy as np
import pytest

from edge.adaptation.fit import FitSettings, fit_head, probabilities
from edge.adaptation.gate import Figures, home_figures, judge, site_figures


def _data(rng: np.random.Generator, classes: int = 4, dim: int = 16):
    centres = rng.normal(0, 3, (classes, dim))
    weight = (0.1 * centres).astype(np.float32)  # the base head: one prototype per class
    bias = np.zeros(classes, np.float32)
    home = np.repeat(np.arange(classes), 50)
    replay = (centres[home] + rng.normal(0, 1, (len(home), dim))).astype(np.float32)
    shift = 1.2 * centres[0]  # the site's microscope makes every cell look more like class 0 (a blast)
    site_labels = np.repeat(np.arange(1, classes), 10)  # no class 0 (blasts) at the site
    site = (centres[site_labels] + shift + rng.normal(0, 1, (len(site_labels), dim))).astype(np.float32)
    return weight, bias, replay, home, site, site_labels, shift, centres


def test_fit_learns_the_site_and_keeps_the_replay() -> None:
    rng = np.random.default_rng(0)
    weight, bias, replay, home, site, site_labels, _, _ = _data(rng)
    allowed = np.eye(4, dtype=bool)[site_labels]
    before = (probabilities(site, weight, bias).argmax(1) == site_labels).mean()
    w, b, history = fit_head(site, allowed, replay, weight, bias, FitSettings(steps=300, replay_weight=10.0))
    after = (probabilities(site, w, b).argmax(1) == site_labels).mean()
    assert after > before and after >= 0.9
    assert history[-1] < history[0]
    # home cells keep their calls (distillation), the class the site never showed included
    kept = (probabilities(replay, w, b).argmax(1) == probabilities(replay, weight, bias).argmax(1)).mean()
    assert kept >= 0.95
    assert (probabilities(replay[home == 0], w, b).argmax(1) == 0).mean() >= 0.95


def test_without_replay_the_head_forgets_more() -> None:
    rng = np.random.default_rng(1)
    weight, bias, replay, _, site, site_labels, _, centres = _data(rng)
    # the site's cells half-way to home class 0: learning them alone redraws class 0's border
    site = (0.5 * centres[site_labels] + 0.5 * centres[0] + rng.normal(0, 1, site.shape)).astype(np.float32)
    allowed = np.eye(4, dtype=bool)[site_labels]
    base_calls = probabilities(replay, weight, bias).argmax(1)
    drift = {}
    for replay_weight in (0.0, 10.0):
        w, b, _ = fit_head(site, allowed, replay, weight, bias, FitSettings(steps=300, replay_weight=replay_weight))
        drift[replay_weight] = (probabilities(replay, w, b).argmax(1) != base_calls).mean()
    assert drift[10.0] < drift[0.0]


def test_a_group_label_trains_the_sum_of_its_classes() -> None:
    rng = np.random.default_rng(2)
    weight, bias, replay, _, site, _, _, _ = _data(rng)
    allowed = np.zeros((len(site), 4), bool)
    allowed[:, 1:3] = True  # every cell "class 1 or 2": the fit may split them either way
    w, b, _ = fit_head(site, allowed, replay, weight, bias, FitSettings(steps=200))
    p = probabilities(site, w, b)
    assert (p[:, 1] + p[:, 2]).mean() > (probabilities(site, weight, bias)[:, 1:3].sum(1)).mean()


def test_gradient_of_the_site_loss_matches_finite_differences() -> None:
    """One Adam step with a tiny rate moves each parameter against the sign of the numeric gradient."""
    rng = np.random.default_rng(3)
    weight, bias, _, _, site, site_labels, _, _ = _data(rng, classes=3, dim=4)
    allowed = np.eye(3, dtype=bool)[site_labels % 3]
    allowed[0, :2] = True  # one cell with a group label

    def loss(b: np.ndarray) -> float:
        p = probabilities(site, weight, b)
        counts = np.unique(allowed, axis=0, return_inverse=True)[1].reshape(-1)
        per = 1 / np.bincount(counts)[counts]
        return float(-(per / per.sum() * np.log((p * allowed).sum(1))).sum())

    numeric = np.array([(loss(bias + 1e-4 * e) - loss(bias - 1e-4 * e)) / 2e-4 for e in np.eye(3)])
    settings = FitSettings(steps=1, lr=1e-3, replay_weight=0.0, anchor=0.0)
    _, b, _ = fit_head(site, allowed, site[:1], weight, bias, settings)
    moved = b - bias
    big = np.abs(numeric) > 1e-3
    assert np.all(np.sign(moved[big]) == -np.sign(numeric[big]))


def test_a_cell_without_an_allowed_class_is_refused() -> None:
    rng = np.random.default_rng(4)
    weight, bias, replay, _, site, _, _, _ = _data(rng)
    with pytest.raises(ValueError, match="allowed"):
        fit_head(site, np.zeros((len(site), 4), bool), replay, weight, bias)


def _figures(**change: float) -> Figures:
    base = {"home_macro_f1": 0.8, "blast_sensitivity": 0.78, "blast_precision": 0.62}
    return Figures(**(base | {"site_accuracy": 0.5, "site_blast": 0.02} | change))


def test_gate_accepts_within_tolerance_and_refuses_with_reasons() -> None:
    before = _figures()
    assert judge(before, _figures(blast_sensitivity=0.765, site_accuracy=0.9, site_blast=0.0)).accepted
    verdict = judge(before, _figures(blast_sensitivity=0.70, site_accuracy=0.9, site_blast=0.05))
    assert not verdict.accepted
    assert any("blast sensitivity falls 0.080" in r for r in verdict.reasons)
    assert any("blast" in r and "5.0%" in r for r in verdict.reasons)
    assert {row["figure"] for row in verdict.table()} >= {"blast_sensitivity", "site_blast"}
    assert not judge(before, _figures(site_accuracy=0.4)).accepted


def test_home_and_site_figures() -> None:
    names = ["blast", "lymphocyte", "monocyte"]
    probs = np.eye(3)[[0, 0, 1, 2, 0]]
    labels = np.array(["blast", "lymphocyte", "lymphocyte", "monocyte", "blast"])
    f1, sensitivity, precision = home_figures(probs, labels, names)
    assert sensitivity == 1.0 and precision == pytest.approx(2 / 3)
    assert 0 < f1 < 1
    allowed = np.array([[False, True, False], [False, True, True], [False, False, True]])
    accuracy, blast, per_type = site_figures(np.eye(3)[[0, 2, 2]], allowed, ["a", "a", "b"], names)
    assert accuracy == pytest.approx(2 / 3) and blast == pytest.approx(1 / 3)
    assert per_type == {"a": 0.5, "b": 1.0}


def test_the_gate_folds_are_the_same_in_every_process() -> None:
    """Python salts string hashes per process: folds drawn in a set's order would change from run to run."""
    import subprocess
    import sys

    code = (
        "from edge.adaptation.adapt import _folds; "
        "types = ['neutrophil'] * 20 + ['lymphocyte'] * 20 + ['monocyte'] * 15 + ['eosinophil'] * 12; "
        "print(_folds(types, 5, 0).tolist())"
    )
    runs = {
        subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed, "PATH": ""}, capture_output=True,
                       text=True, check=True).stdout
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert len(runs) == 1
