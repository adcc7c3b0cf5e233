"""Codes the lab reports use: LOINC where a bone-marrow term was checked, local codes for the rest.

Only terms whose LOINC long name was read from a published LOINC listing are here (see
docs/reports.md for the table and the source). They are "Manual count" terms: LOINC has no
"by automated count" marrow differential, and the slide's count is reviewed by a person before
it is final. A lab whose LIS expects other codes maps them in ``reports.loinc`` of the config;
every class also carries the appliance's local code, so nothing depends on this table.
"""

from __future__ import annotations

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
# Local code systems (URIs the appliance owns; named in docs/reports.md).
LOCAL_CLASS = "urn:marrow-edge:class"
LOCAL_RULE = "urn:marrow-edge:rule"
LOCAL_OUTCOME = "urn:marrow-edge:rule-outcome"
LOCAL_OBSERVATION = "urn:marrow-edge:observation"

PANEL = ("47286-0", "Differential panel - Bone marrow")
CELLS_COUNTED = ("38257-2", "Cells Counted Total [#] in Bone marrow")

# class name -> (LOINC code, long common name)
DEFAULT_LOINC: dict[str, tuple[str, str]] = {
    "lymphocyte": ("11108-8", "Lymphocytes/cells in Bone marrow by Manual count"),
    "basophil": ("11105-4", "Basophils/cells in Bone marrow by Manual count"),
    "erythroblast": ("40689-2", "Erythroid cells/cells in Bone marrow by Manual count"),
}


def loinc_for(name: str, overrides: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(code, display) for a class, the config's mapping first."""
    if overrides and name in overrides:
        return overrides[name], f"{name} (lab mapping)"
    return DEFAULT_LOINC.get(name)


def local_display(name: str) -> str:
    return name.replace("_", " ")
