"""The differential recomputed from stored cells: the machine's labels, or the reviewed ones.

The slide keeps its own setup (classes with roles, rule pack, counting settings, guard
calibration), so a slide is recounted exactly as it was counted, without the bundle or the
config that made it, even after either changed.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import numpy as np

from edge.analysis.field import Cell, FieldResult, FieldScale
from edge.counting.rules import RulePack
from edge.counting.tally import Slide, Tally
from edge.engines.bundle import ClassSpec, DomainGuardSpec, ScaleSpec
from edge.review.records import NOT_COUNTABLE, SlideRecord, StoredCell


def slide_setup(
    classes: list[ClassSpec],
    rules: RulePack,
    counting: Any,
    guard: DomainGuardSpec | None,
    crop_size: int,
    crop_margin: float,
    countable_threshold: float,
    flag_margin: float,
    scale: ScaleSpec | None = None,
    um_per_px: float | None = None,
) -> dict[str, Any]:
    """What a slide keeps so that it can be recounted later (``counting``: the CountingConfig)."""
    return {
        "classes": [c.model_dump() for c in classes],
        "rules": rules.model_dump(by_alias=True),
        "target_count": counting.target_count,
        "confidence": counting.confidence,
        "denominator_roles": list(counting.denominator_roles),
        "review_below": counting.review_below,
        "domain_guard": guard.model_dump() if guard is not None else None,
        "crop_size": crop_size,
        "crop_margin": crop_margin,
        "countable_threshold": countable_threshold,
        "flag_margin": flag_margin,
        "scale": scale.model_dump() if scale is not None else None,
        "um_per_px": um_per_px,
    }


def classes_of(setup: dict[str, Any]) -> list[ClassSpec]:
    return [ClassSpec.model_validate(c) for c in setup["classes"]]


def trays(setup: dict[str, Any]) -> list[str]:
    """Where a cell can be put: every counted class in bundle order, then not countable."""
    return [c.name for c in classes_of(setup) if c.role != "not_countable"] + [NOT_COUNTABLE]


def as_slide(record: SlideRecord) -> Slide:
    return Slide(
        slide_id=record.slide_id,
        specimen_id=record.specimen_id,
        started=dt.datetime.fromisoformat(record.started),
        ended=dt.datetime.fromisoformat(record.ended) if record.ended else None,
        source=record.source,
    )


def recount(record: SlideRecord, cells: list[StoredCell], reviewed: bool = True) -> Tally:
    """The slide's tally from its stored cells; ``reviewed``: with the technician's labels."""
    setup = record.setup
    classes = classes_of(setup)
    guard = setup.get("domain_guard")
    tally = Tally(
        classes,
        RulePack.model_validate(setup["rules"]),
        setup["target_count"],
        setup["confidence"],
        tuple(setup["denominator_roles"]),
        DomainGuardSpec.model_validate(guard) if guard else None,
        setup["review_below"],
        ScaleSpec.model_validate(setup["scale"]) if setup.get("scale") else None,
        setup.get("um_per_px"),
    )
    never = {c.name for c in classes if c.role == "not_countable"}
    by_field: dict[int, list[Cell]] = defaultdict(list)
    factors: dict[int, float] = {}
    still_flagged = 0
    for c in cells:
        label = c.label if reviewed and c.label is not None else None
        if label is None:
            name, countable = c.machine_class, c.countable
        else:
            countable = label != NOT_COUNTABLE and label not in never
            name = label if label != NOT_COUNTABLE else c.machine_class
        if c.factor is not None:
            factors[c.field_index] = c.factor
        by_field[c.field_index].append(
            Cell(
                box=c.box,
                detector_score=c.detector_score,
                class_name=name,
                class_probability=c.class_probability,
                probabilities=np.asarray(c.probabilities, np.float32),
                p_countable=c.p_countable,
                countable=countable,
                colour=tuple(c.colour) if c.colour is not None else None,
            )
        )
        still_flagged += countable and label is None and c.class_probability < setup["review_below"]
    for index in sorted(by_field):
        scale = FieldScale(setup.get("um_per_px"), factors[index], 1) if index in factors else None
        tally.add(FieldResult(index, str(index), 0, 0, by_field[index], scale=scale))
    if reviewed:
        tally.flagged = still_flagged  # a cell a person placed needs no further look
    fields_without_cells = (record.machine_report or {}).get("fields", tally.fields) - tally.fields
    tally.fields += max(0, fields_without_cells)  # fields where nothing was found still count as fields
    for skipped in (record.machine_report or {}).get("skipped", []):
        tally.skip(skipped["source"], skipped["reason"])
    return tally
