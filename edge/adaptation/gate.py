"""The gate an adapted classifier passes before a box may use it.

Two sets judge it, before and after: the bundle's reference cells (held-back home marrow: six-class
macro-F1, blast sensitivity and precision, each may fall by at most ``TOLERANCE``) and the site's own
corrected cells that the fit did not see (k-fold: each fold fitted without it). The site's accuracy
must not fall, and the adapted heads may call no more of the site's cells blast than the base did
(a lab's first corrected slides are normal blood and marrow: a blast among them is a false alarm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

TOLERANCE = 0.02
SIX = ("blast", "promyelocyte", "lymphocyte", "monocyte", "eosinophil", "neutrophilic_segmented")
BLAST = "blast"
WORDS = {
    "home_macro_f1": "home marrow, six-class macro-F1",
    "blast_sensitivity": "home blasts found (sensitivity)",
    "blast_precision": "home blast calls right (precision)",
    "site_accuracy": "this microscope's cells read right",
    "site_blast": "this microscope's cells called blast",
}


@dataclass
class Figures:
    home_macro_f1: float
    blast_sensitivity: float
    blast_precision: float
    site_accuracy: float  # the site's held-out cells called within what their label allows
    site_blast: float  # share of the site's held-out cells called blast (none of them is one)
    per_type: dict[str, float] = field(default_factory=dict)


@dataclass
class Verdict:
    accepted: bool
    reasons: list[str]
    before: Figures
    after: Figures

    def table(self) -> list[dict[str, object]]:
        rows = []
        for key, before in asdict(self.before).items():
            if key == "per_type":
                continue
            adapted = round(getattr(self.after, key), 4)
            rows.append({"figure": key, "words": WORDS[key], "base": round(before, 4), "adapted": adapted})
        return rows

    def record(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "reasons": self.reasons,
            "tolerance": TOLERANCE,
            "table": self.table(),
            "per_type": {"base": self.before.per_type, "adapted": self.after.per_type},
        }


def home_figures(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> tuple[float, float, float]:
    """Six-class macro-F1 (the classes of SIX the reference holds), blast sensitivity and precision."""
    called = np.asarray(class_names)[probs.argmax(axis=1)]
    scores = []
    for name in SIX:
        truth = labels == name
        if not truth.any():
            continue
        hit = (truth & (called == name)).sum()
        scores.append(2 * hit / max(truth.sum() + (called == name).sum(), 1))
    blasts, called_blast = labels == BLAST, called == BLAST
    sensitivity = (blasts & called_blast).sum() / max(blasts.sum(), 1)
    precision = (blasts & called_blast).sum() / max(called_blast.sum(), 1)
    return float(np.mean(scores)) if scores else float("nan"), float(sensitivity), float(precision)


def site_figures(
    probs: np.ndarray, allowed: np.ndarray, types: list[str], class_names: list[str]
) -> tuple[float, float, dict[str, float]]:
    called = probs.argmax(axis=1)
    right = allowed[np.arange(len(called)), called]
    per_type = {t: float(right[[x == t for x in types]].mean()) for t in sorted(set(types))}
    blast = class_names.index(BLAST) if BLAST in class_names else -1
    return float(right.mean()), float((called == blast).mean()), per_type


def judge(before: Figures, after: Figures) -> Verdict:
    reasons = []
    for key, words in (
        ("home_macro_f1", "home six-class macro-F1"),
        ("blast_sensitivity", "home blast sensitivity"),
        ("blast_precision", "home blast precision"),
    ):
        drop = getattr(before, key) - getattr(after, key)
        if drop > TOLERANCE:
            reasons.append(f"{words} falls {drop:.3f} (more than {TOLERANCE})")
    if after.site_blast > before.site_blast:
        reasons.append(f"calls {after.site_blast:.1%} of the site's cells blast (the base: {before.site_blast:.1%})")
    if after.site_accuracy < before.site_accuracy:
        reasons.append(f"the site's held-out cells: {after.site_accuracy:.3f}, worse than the base's")
    return Verdict(not reasons, reasons, before, after)
