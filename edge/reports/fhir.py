"""The report as a FHIR R4 Bundle (JSON): DiagnosticReport, one Observation per class, rules, Specimen, Device.

Plain dictionaries: the runtime needs no FHIR library. The tests validate the output with
``fhir.resources`` (its R4B models: the library has no R4 models for pydantic 2; Bundle,
DiagnosticReport, Observation, Specimen and Device are the same in R4 and R4B for what is used here).
The appliance knows no patient: the Specimen carries the specimen id the LIS gave, and the LIS
links it to its patient. Resource ids are derived from the slide and version, so exporting the
same report twice gives the same ids.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from edge.reports.codes import (
    CELLS_COUNTED,
    LOCAL_CLASS,
    LOCAL_OBSERVATION,
    LOCAL_OUTCOME,
    LOCAL_RULE,
    LOINC,
    PANEL,
    UCUM,
    local_display,
    loinc_for,
)
from edge.reports.content import LabReport, applicable_rules, rule_sentence

CATEGORY_LAB = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]
}
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OUTCOME_INTERPRETATION = {
    "positive": ("POS", "Positive"),
    "negative": ("NEG", "Negative"),
    "indeterminate": ("IND", "Indeterminate"),
}


def _time(t: dt.datetime) -> str:
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).isoformat(timespec="seconds")


def _percent(value: float) -> dict[str, Any]:
    return {"value": round(value, 2), "unit": "%", "system": UCUM, "code": "%"}


def to_fhir(report: LabReport, loinc: dict[str, str] | None = None) -> dict[str, Any]:
    """The Bundle (type collection) as a JSON-ready dict."""
    key = f"marrow-edge:{report.device_id}:{report.slide_id}:{report.version}"

    def urn(name: str) -> str:
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{key}:{name}')}"

    r = report.report
    bundle_ref = r.provenance.bundle
    device_url, specimen_url = urn("device"), urn("specimen")
    common = {
        "status": report.status,
        "category": [CATEGORY_LAB],
        "specimen": {"reference": specimen_url},
        "device": {"reference": device_url},
        "effectiveDateTime": _time(report.effective),
        "issued": _time(report.issued),
    }
    entries: list[tuple[str, dict[str, Any]]] = []

    device = {
        "resourceType": "Device",
        "identifier": [{"system": "urn:marrow-edge:device", "value": report.device_id}],
        "deviceName": [{"name": "marrow-edge differential counter", "type": "model-name"}],
        "version": [
            {"type": {"text": "software"}, "value": r.provenance.software_version},
            {"type": {"text": "model bundle"}, "value": f"{bundle_ref.name} {bundle_ref.version} ({bundle_ref.hash})"},
            {"type": {"text": "inference backend"}, "value": r.provenance.backend},
        ],
    }
    if not bundle_ref.clinical_use:
        device["note"] = [{"text": "The model bundle is not validated for clinical use."}]
    entries.append((device_url, device))

    marrow = bundle_ref.trained_on != "peripheral_blood"
    specimen: dict[str, Any] = {
        "resourceType": "Specimen",
        "type": {"text": "Bone marrow smear" if marrow else "Peripheral blood smear"},
        "note": [{"text": f"Slide {report.slide_id} counted by {report.device_id}"}],
    }
    if report.specimen_id:
        specimen["identifier"] = [{"system": "urn:marrow-edge:specimen", "value": report.specimen_id}]
    entries.append((specimen_url, specimen))

    results = []
    for name in report.classes:
        count, percent, low, high = report.share(name)
        coding = [{"system": LOCAL_CLASS, "code": name, "display": local_display(name)}]
        if (code := loinc_for(name, loinc)) is not None:
            coding.append({"system": LOINC, "code": code[0], "display": code[1]})
        obs = {
            "resourceType": "Observation",
            **common,
            "code": {"coding": coding, "text": f"{local_display(name)} / counted cells"},
            "valueQuantity": _percent(percent),
            "component": [
                {"code": _local("ci95-low", "95% CI lower bound"), "valueQuantity": _percent(low)},
                {"code": _local("ci95-high", "95% CI upper bound"), "valueQuantity": _percent(high)},
                {"code": _local("cells", "Cells of this class counted"), "valueInteger": count},
            ],
        }
        url = urn(f"class:{name}")
        entries.append((url, obs))
        results.append(url)

    total_url = urn("counted")
    entries.append(
        (
            total_url,
            {
                "resourceType": "Observation",
                **common,
                "code": {
                    "coding": [
                        {"system": LOINC, "code": CELLS_COUNTED[0], "display": CELLS_COUNTED[1]},
                        {"system": LOCAL_OBSERVATION, "code": "cells-counted", "display": "Cells counted"},
                    ]
                },
                "valueInteger": r.countable,
                "note": [{"text": f"{r.not_countable} cell(s) found but not countable; {r.fields} field(s)"}]
                + ([{"text": report.incomplete}] if report.incomplete else []),
                **(
                    {"interpretation": [{"coding": [{"system": INTERPRETATION, "code": "L", "display": "Low"}]}]}
                    if report.incomplete
                    else {}
                ),
            },
        )
    )
    results.append(total_url)

    for rule in applicable_rules(report):
        obs = {
            "resourceType": "Observation",
            **common,
            "code": {"coding": [{"system": LOCAL_RULE, "code": rule.id, "display": rule.label}], "text": rule.label},
            "valueCodeableConcept": {"coding": [{"system": LOCAL_OUTCOME, "code": rule.state}], "text": rule.state},
            "note": [{"text": rule_sentence(rule)}],
        }
        if rule.state in OUTCOME_INTERPRETATION:
            code, display = OUTCOME_INTERPRETATION[rule.state]
            obs["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}]
        url = urn(f"rule:{rule.id}")
        entries.append((url, obs))
        results.append(url)

    if r.domain is not None:
        url = urn("domain")
        entries.append(
            (
                url,
                {
                    "resourceType": "Observation",
                    **common,
                    "code": {
                        "coding": [
                            {"system": LOCAL_OBSERVATION, "code": "domain-shift", "display": "Domain-shift guard"}
                        ]
                    },
                    "valueCodeableConcept": {
                        "coding": [{"system": LOCAL_OUTCOME, "code": r.domain.state}],
                        "text": r.domain.state,
                    },
                    "note": [{"text": r.domain.message}] + ([{"text": r.domain.scale}] if r.domain.scale else []),
                },
            )
        )
        results.append(url)

    conclusion = [rule_sentence(rule) for rule in applicable_rules(report)]
    if r.domain is not None and r.domain.state == "shifted":
        conclusion.insert(0, f"WARNING: {r.domain.message}")
    if report.incomplete:
        conclusion.insert(0, report.incomplete)
    if report.reason:
        conclusion.insert(0, f"Amended (version {report.version}): {report.reason}")
    conclusion.append(r.disclaimer)
    diagnostic = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": "urn:marrow-edge:report", "value": f"{report.slide_id}/{report.version}"}],
        "status": report.status,
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM", "display": "Hematology"}
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": PANEL[0], "display": PANEL[1]}], "text": "Differential count"},
        "effectiveDateTime": _time(report.effective),
        "issued": _time(report.issued),
        "specimen": [{"reference": specimen_url}],
        "result": [{"reference": u} for u in results],
        "conclusion": " ".join(conclusion),
    }
    if report.operator:
        diagnostic["resultsInterpreter"] = [{"display": report.operator}]
    report_url = urn("report")
    entries.insert(0, (report_url, diagnostic))
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:marrow-edge:report", "value": f"{report.slide_id}/{report.version}"},
        "type": "collection",
        "timestamp": _time(report.created),
        "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries],
    }


def _local(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOCAL_OBSERVATION, "code": code, "display": display}]}


def fhir_bytes(report: LabReport, loinc: dict[str, str] | None = None) -> bytes:
    return (json.dumps(to_fhir(report, loinc), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
