"""Each cell set's codes and its image-wise 70/10/20 split (seed 0), in one place.

``split_samples`` shuffles the codes in turn from one generator, so splitting a subset of a set's
codes gives another split: a "test" cell could be one the classifiers trained on. Everything that
asks for a split of these sets (crops, composed fields, guard, threshold, held-back figures) asks here.
"""

from __future__ import annotations

from pathlib import Path

from training.data.readers import CellSample, read_cell_folders, split_samples

SETS = {
    "pbc_cells": ["BA", "BNE", "EO", "ERB", "LY", "MMY", "MO", "MY", "PMY", "SNE", "PLATELET"],
    "matek_bm": ["BLA", "LYT", "MON", "EOS", "NGS", "PMO", "NIF", "ART"],
}


def cell_splits(data: Path, name: str) -> dict[str, list[CellSample]]:
    """Set ``name``'s train/val/test cells, split over every code of the set."""
    return split_samples(read_cell_folders(data / name, SETS[name]), seed=0)


def cell_split(data: Path, name: str, split: str, codes: list[str] | None = None) -> list[CellSample]:
    """One split of set ``name``, narrowed to ``codes`` after the split over every code."""
    samples = cell_splits(data, name)[split]
    return samples if codes is None else [s for s in samples if s.label in codes]
