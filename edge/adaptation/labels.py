"""What a technician's label allows: a bundle class, one of its aliases, or a five-part group.

A blood lab names five white-cell types; the marrow bundle splits neutrophils into four stages. A
cell labelled with a group teaches the summed probability of the group's classes, so a lab that
counts "neutrophil" does not have to guess a stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.engines.bundle import ClassSpec
from edge.errors import EdgeError

# Five white-cell types as sets from other labs name them (zheng2018_wbc folders, a 5-part analyser).
FIVE_GROUPS: dict[str, tuple[str, ...]] = {
    "neutrophil": (
        "neutrophilic_segmented",
        "neutrophilic_band",
        "neutrophilic_metamyelocyte",
        "neutrophilic_myelocyte",
    ),
    "lymphocyte": ("lymphocyte",),
    "monocyte": ("monocyte",),
    "eosinophil": ("eosinophil",),
    "basophil": ("basophil",),
}


def _key(label: str) -> str:
    key = label.strip().lower().replace(" ", "_")
    return key[:-1] if key.endswith("s") and key[:-1] in FIVE_GROUPS else key  # NEUTROPHILS -> neutrophil


def allowed_classes(label: str, classes: Sequence[ClassSpec]) -> tuple[str, ...]:
    """The bundle classes ``label`` allows (class name, alias or group; case-insensitive)."""
    key = _key(label)
    for spec in classes:
        if key in (spec.name.lower(), *(a.lower() for a in spec.aliases)):
            return (spec.name,)
    if key in FIVE_GROUPS:
        names = {spec.name for spec in classes}
        members = tuple(c for c in FIVE_GROUPS[key] if c in names)
        if members:
            return members
    raise EdgeError(
        f"label {label!r} names no class of the bundle, no alias and none of the groups {', '.join(FIVE_GROUPS)}"
    )


def allowed_mask(labels: Sequence[str], classes: Sequence[ClassSpec]) -> np.ndarray:
    """(cells, classes) bool: which classes each label allows."""
    index = {spec.name: i for i, spec in enumerate(classes)}
    mask = np.zeros((len(labels), len(classes)), bool)
    for row, label in enumerate(labels):
        mask[row, [index[c] for c in allowed_classes(label, classes)]] = True
    return mask


def group_of(label: str, classes: Sequence[ClassSpec]) -> str:
    """The label's type for counting cells per type: its group if it has one, else its class."""
    allowed = allowed_classes(label, classes)
    for group, members in FIVE_GROUPS.items():
        if set(allowed) <= set(members):
            return group
    return allowed[0]
