"""What a technician's label allows."""

from __future__ import annotations

import pytest

from edge.adaptation.labels import allowed_classes, allowed_mask, group_of
from edge.engines.bundle import ClassSpec
from edge.errors import EdgeError

CLASSES = [
    ClassSpec(name="blast", role="key", aliases=["BLA"]),
    ClassSpec(name="neutrophilic_segmented", role="wbc", aliases=["SNE", "NGS"]),
    ClassSpec(name="neutrophilic_band", role="wbc", aliases=["BNE"]),
    ClassSpec(name="lymphocyte", role="wbc", aliases=["LY"]),
    ClassSpec(name="not_countable", role="not_countable"),
]


@pytest.mark.parametrize(
    ("label", "allowed"),
    [
        ("blast", ("blast",)),
        ("BLA", ("blast",)),
        ("ngs", ("neutrophilic_segmented",)),
        ("NEUTROPHIL", ("neutrophilic_segmented", "neutrophilic_band")),
        ("Neutrophils", ("neutrophilic_segmented", "neutrophilic_band")),
        ("LYMPHOCYTE", ("lymphocyte",)),
    ],
)
def test_class_alias_or_group(label: str, allowed: tuple[str, ...]) -> None:
    assert allowed_classes(label, CLASSES) == allowed


def test_unknown_label_names_the_choices() -> None:
    with pytest.raises(EdgeError, match=r"names no class.*neutrophil"):
        allowed_classes("megakaryocyte", CLASSES)
    with pytest.raises(EdgeError):
        allowed_classes("monocyte", CLASSES)  # a group whose classes this bundle lacks


def test_mask_and_type() -> None:
    mask = allowed_mask(["NEUTROPHIL", "BLA"], CLASSES)
    assert mask.tolist() == [[False, True, True, False, False], [True, False, False, False, False]]
    assert group_of("SNE", CLASSES) == "neutrophil"
    assert group_of("NEUTROPHIL", CLASSES) == "neutrophil"
    assert group_of("blast", CLASSES) == "blast"
