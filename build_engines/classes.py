"""Class lists a bundle can be exported with.

The seed paper counts 19 WBC types plus neuroblastoma cells, with rare types grouped as
class 20 ("other"). Its text names most of them but prints no full list; this one is
rebuilt from the classes the paper names (results and discussion) and from DESIGN.md.
"""

from __future__ import annotations

from edge.engines.bundle import ClassSpec

PAPER_CLASSES: list[ClassSpec] = [
    ClassSpec(name="lymphoblast", role="key", description="ALL rule (FAB: > 20% of counted cells)"),
    ClassSpec(name="lymphocyte", role="wbc"),
    ClassSpec(name="lymphoma_cell", role="key", description="marrow involvement by lymphoma"),
    ClassSpec(name="neuroblastoma_cell", role="key", description="marrow metastasis of neuroblastoma"),
    ClassSpec(name="promyelocyte", role="key", aliases=["PMY"], description="AML M3 flag"),
    ClassSpec(name="neutrophilic_myelocyte", role="wbc", aliases=["MY"]),
    ClassSpec(name="neutrophilic_metamyelocyte", role="wbc", aliases=["MMY"]),
    ClassSpec(name="neutrophilic_band", role="wbc", aliases=["BNE"]),
    ClassSpec(name="neutrophilic_segmented", role="wbc", aliases=["SNE"]),
    ClassSpec(name="eosinophil", role="wbc", aliases=["EO"]),
    ClassSpec(name="basophil", role="wbc", aliases=["BA"]),
    ClassSpec(name="monocyte", role="wbc", aliases=["MO"]),
    ClassSpec(name="plasma_cell", role="wbc"),
    ClassSpec(name="proerythroblast", role="wbc"),
    ClassSpec(name="basophilic_erythroblast", role="wbc"),
    ClassSpec(name="polychromatic_erythroblast", role="wbc"),
    ClassSpec(name="orthochromatic_erythroblast", role="wbc", aliases=["ERB"]),
    ClassSpec(name="megakaryoblast", role="key", description="AML M7 flag"),
    ClassSpec(name="promegakaryocyte", role="wbc"),
    ClassSpec(name="other", role="other", description="rare types grouped (the paper's class 20)"),
]
