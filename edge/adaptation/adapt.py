"""Adapt a bundle's classifier to a site's microscope from its corrected cells (issue 41).

Flow: the site's crops -> features of each stage-2 member (the bundle's own graph, ONNX Runtime)
-> k-fold fits for the gate's site figures -> one fit on every cell -> the gate (reference and site,
before and after) -> an adapted bundle ``<version>+site.<n>`` written whole into a staging folder and
renamed into place, or nothing at all when the gate refuses or anything fails.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge.adaptation.fit import DEFAULT_SETTINGS, FitSettings, fit_head, probabilities
from edge.adaptation.gate import Figures, Verdict, home_figures, judge, site_figures
from edge.adaptation.heads import FeatureExtractor, Head, find_heads, load_graph, with_heads
from edge.adaptation.labels import allowed_mask, group_of
from edge.engines.bundle import Bundle, SiteAdaptation, file_entry, load_bundle, write_manifest
from edge.errors import BundleError, EdgeError

log = logging.getLogger(__name__)
MIN_PER_TYPE = 5  # fewer corrected cells of a type teach noise, and the gate's folds need some
MAX_FOLDS = 5
Progress = Callable[[str, float], None]  # (step, fraction done)


@dataclass
class SiteCells:
    """Corrected cells of the site: crops as the count path cuts them, each with its label."""

    crops: np.ndarray  # (n, size, size, 3) uint8 RGB
    labels: list[str]
    slides: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    verdict: Verdict
    out: Path | None  # the adapted bundle, None when refused
    version: str
    cells_per_type: dict[str, int]
    seconds: float


def mean_probs(
    heads: list[Head], features: list[np.ndarray], weights: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """The ensemble's class probabilities (mean of the members' softmax, as the fused graph computes them)."""
    return np.mean([probabilities(f, w, b) for f, (w, b) in zip(features, weights, strict=True)], axis=0)


def _load_set(bundle: Bundle, file: str, members: int) -> tuple[list[np.ndarray], np.ndarray]:
    with np.load(bundle.path(file), allow_pickle=False) as data:
        return [data[f"features_{i}"].astype(np.float32) for i in range(members)], data["labels"].astype(str)


def _folds(types: list[str], count: int, seed: int) -> np.ndarray:
    """Fold index per cell, each type spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(types), int)
    for t in sorted(set(types)):  # a set's order changes with each process's string hashing
        index = rng.permutation([i for i, x in enumerate(types) if x == t])
        fold[index] = np.arange(len(index)) % count
    return fold


def usable(cells: SiteCells, classes) -> tuple[SiteCells, list[str], dict[str, int]]:
    """The cells of every type with at least MIN_PER_TYPE of them, their types and the count per type; a type
    with fewer is left out (said in the log), and fewer than two types left is an error that names them all."""
    types = [group_of(label, classes) for label in cells.labels]
    counts = dict(sorted(Counter(types).items()))
    few = {t: n for t, n in counts.items() if n < MIN_PER_TYPE}
    if len(counts) - len(few) < 2:
        listed = ", ".join(f"{t} {n}" for t, n in counts.items())
        raise EdgeError(f"too few corrected cells: at least {MIN_PER_TYPE} of each of two types are needed ({listed})")
    if few:
        log.warning(
            "left out, fewer than %d cells: %s", MIN_PER_TYPE, ", ".join(f"{t} {n}" for t, n in few.items())
        )
    keep = [i for i, t in enumerate(types) if t not in few]
    slides = [cells.slides[i] for i in keep] if cells.slides else []
    kept = SiteCells(cells.crops[keep], [cells.labels[i] for i in keep], slides)
    return kept, [types[i] for i in keep], {t: n for t, n in counts.items() if t not in few}


class Adapter:
    """One bundle, ready to adapt: its heads, its features graph and its adaptation sets."""

    def __init__(self, bundle: Bundle, settings: FitSettings = DEFAULT_SETTINGS, threads: int = 0) -> None:
        spec = bundle.manifest.adaptation
        if spec is None:
            raise BundleError(
                f"bundle {bundle.manifest.name} {bundle.manifest.version} carries no adaptation cells (replay and "
                "reference sets): it cannot be adapted on a box; training.bundle.adaptation adds them"
            )
        self.bundle, self.settings = bundle, settings
        self.classes = bundle.manifest.classes
        self.names = bundle.class_names
        self.graph = load_graph(bundle.path(bundle.manifest.classifier.file))
        self.heads = find_heads(self.graph, len(self.names))
        self.features = FeatureExtractor(self.graph, self.heads, threads)
        self.replay, self.replay_labels = _load_set(bundle, spec.replay.file, len(self.heads))
        guarded = np.isin(self.replay_labels, settings.guard)
        self.replay_weights = np.where(guarded, settings.guard_weight, 1.0).astype(np.float32)
        self.reference, self.reference_labels = _load_set(bundle, spec.reference.file, len(self.heads))
        self.calibration, self.calibration_labels = (
            _load_set(bundle, spec.calibration.file, len(self.heads))
            if spec.calibration
            else (self.replay, self.replay_labels)
        )
        self.base = [(h.weight, h.bias) for h in self.heads]

    def fit(self, features: list[np.ndarray], allowed: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        weights = [
            fit_head(f, allowed, r, w, b, self.settings, self.replay_weights)[:2]
            for f, r, (w, b) in zip(features, self.replay, self.base, strict=True)
        ]
        return self.keep_confidence(weights)

    def keep_confidence(self, weights: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each guarded class (blast) keeps the base's confidence on the calibration cells of that class (the
        bundle's validation cells; else its replay cells): its bias is raised by the least amount (bisection) that
        gives them the base's mean probability of it. The site's cells hold no blasts, so nothing in the fit
        speaks for them; the distillation holds the training cells, and a blast the network never saw, nearer
        the boundary, is what loses."""
        for name in self.settings.guard:
            if name not in self.names or not (self.calibration_labels == name).any():
                continue
            index = self.names.index(name)
            theirs = [f[self.calibration_labels == name] for f in self.calibration]

            def confidence(w, index=index, theirs=theirs) -> float:
                return float(mean_probs(self.heads, theirs, w)[:, index].mean())

            def shifted(delta: float, w=weights, index=index) -> list[tuple[np.ndarray, np.ndarray]]:
                return [(wt, b + delta * (np.arange(len(b)) == index)) for wt, b in w]

            target = confidence(self.base)
            if confidence(weights) >= target:
                continue
            low, high = 0.0, 8.0
            for _ in range(20):
                middle = (low + high) / 2
                low, high = (low, middle) if confidence(shifted(middle)) >= target else (middle, high)
            weights = shifted(high)
        return weights

    def figures(self, weights, site_probs: np.ndarray, allowed: np.ndarray, types: list[str]) -> Figures:
        home = home_figures(mean_probs(self.heads, self.reference, weights), self.reference_labels, self.names)
        accuracy, blast, per_type = site_figures(site_probs, allowed, types, self.names)
        return Figures(*home, accuracy, blast, per_type)

    def adapt(self, cells: SiteCells, progress: Progress | None = None) -> tuple[Verdict, list, dict[str, int]]:
        """The gate's verdict, the new heads' weights and the cells per type."""
        report = progress or (lambda step, done: None)
        cells, types, per_type = usable(cells, self.classes)
        allowed = allowed_mask(cells.labels, self.classes)
        report("features", 0.0)
        features = self.features(cells.crops)
        folds = min(MAX_FOLDS, min(per_type.values()))
        fold_of = _folds(types, folds, self.settings.seed)
        held_out = np.zeros((len(types), len(self.names)), np.float32)
        for k in range(folds):
            report(f"fold {k + 1} of {folds}", (k + 1) / (folds + 2))
            train, test = fold_of != k, fold_of == k
            weights = self.fit([f[train] for f in features], allowed[train])
            held_out[test] = mean_probs(self.heads, [f[test] for f in features], weights)
        report("final fit", (folds + 1) / (folds + 2))
        weights = self.fit(features, allowed)
        before = self.figures(self.base, mean_probs(self.heads, features, self.base), allowed, types)
        after = self.figures(weights, held_out, allowed, types)
        report("gate", 1.0)
        return judge(before, after), weights, per_type


def _next_version(bundle: Bundle) -> tuple[str, int]:
    site = bundle.manifest.site.site + 1 if bundle.manifest.site else 1
    base = bundle.manifest.version.split("+site.")[0]
    return f"{base}+site.{site}", site


def _free(out: Path) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise EdgeError(f"{out} exists and is not empty: give a new folder for the adapted bundle")
    return out


def write_adapted(
    bundle: Bundle, adapter: Adapter, weights, verdict: Verdict, per_type: dict, out: Path, operator: str, slides
) -> tuple[Path, str]:
    """The adapted bundle at ``out`` (an empty or new folder): staged beside it, renamed into place only when
    whole."""
    version, site = _next_version(bundle)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".adapt-", dir=out.parent))
    try:
        manifest = bundle.manifest
        # the torch weights and INT8 graphs hold the base heads: an adapted bundle runs its ONNX graph only
        keep = {name for name in manifest.files if not name.startswith("torch/")}
        if manifest.int8:
            keep -= {manifest.int8.detector, manifest.int8.classifier}
        for name in keep:
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle.path(name), target)
        classifier = manifest.classifier.file
        (staging / classifier).write_bytes(with_heads(adapter.graph, adapter.heads, weights))
        files = {name: manifest.files[name] for name in keep} | {classifier: file_entry(staging / classifier)}
        record = SiteAdaptation(
            base=f"{manifest.name} {manifest.version}",
            base_hash=bundle.digest,
            site=site,
            operator=operator,
            time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            slides=sorted(set(slides)),
            cells_per_type=per_type,
            gate=verdict.record(),
            settings=asdict(adapter.settings),
        )
        adapted = manifest.model_copy(
            update={"version": version, "files": files, "site": record, "torch_weights": None, "int8": None}
        )
        write_manifest(staging, adapted)
        load_bundle(staging)  # every hash checked before it is put in place
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, version


def adapt_bundle(
    bundle: Bundle,
    cells: SiteCells,
    out: Path,
    operator: str = "unknown",
    settings: FitSettings = DEFAULT_SETTINGS,
    progress: Progress | None = None,
) -> Outcome:
    """Adapt ``bundle`` (loaded and verified by the caller) to ``cells``; write it to ``out`` if the gate accepts."""
    started = time.perf_counter()
    out = _free(out)  # before the work, not after it
    adapter = Adapter(bundle, settings)
    verdict, weights, per_type = adapter.adapt(cells, progress)
    version = _next_version(bundle)[0]
    path = None
    if verdict.accepted:
        path, version = write_adapted(bundle, adapter, weights, verdict, per_type, out, operator, cells.slides)
        log.info("adapted bundle %s written to %s", version, path)
    else:
        log.warning("adaptation refused: %s", "; ".join(verdict.reasons))
    return Outcome(verdict, path, version, per_type, time.perf_counter() - started)
