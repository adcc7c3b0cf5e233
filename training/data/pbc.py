"""The public PBC cell set (shared/data/pbc_cells) as the starter bundle's stage-2 data."""

from __future__ import annotations

from build_engines.classes import PAPER_CLASSES
from edge.engines.bundle import ClassSpec

# Folder names of the ten WBC classes and the display names the bundle uses (seed-paper names).
PBC_WBC = {
    "BA": "basophil",
    "BNE": "neutrophilic_band",
    "EO": "eosinophil",
    "ERB": "erythroblast",
    "LY": "lymphocyte",
    "MMY": "neutrophilic_metamyelocyte",
    "MO": "monocyte",
    "MY": "neutrophilic_myelocyte",
    "PMY": "promyelocyte",
    "SNE": "neutrophilic_segmented",
}


def pbc_classes() -> list[ClassSpec]:
    """Bundle classes for a PBC-trained stage 2, roles as in the paper's list."""
    roles = {c.name: c.role for c in PAPER_CLASSES}
    return [ClassSpec(name=name, role=roles.get(name, "wbc"), aliases=[folder]) for folder, name in PBC_WBC.items()]
