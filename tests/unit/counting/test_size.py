"""The scale's part of the domain guard (edge.counting.size, issue 46): a slide whose cells reach the
detector at another size than it works at (objective changed, no scale set) holds its rules."""

import re

import numpy as np
import pytest

from edge.analysis.field import Cell, FieldResult, FieldScale
from edge.counting.rules import load_rule_pack
from edge.counting.size import SizeWatch
from edge.counting.tally import Tally
from edge.engines.bundle import ClassSpec, ScaleSpec

CLASSES = [
    ClassSpec(name="blast", role="key", aliases=["BLA"]),
    ClassSpec(name="lymphocyte", role="wbc", aliases=["LYT"]),
    ClassSpec(name="not_countable", role="not_countable", aliases=["NIF", "ART"]),
]
SCALE = ScaleSpec(
    um_per_px=0.0875, range_um_per_px=(0.08, 0.2), cell_side_px_p10=95, cell_side_px_median=150,
    cell_side_px_p90=200, cell_side_px_max=220, cells=600, how="test",
)  # fmt: skip


def _field(side: float, factor: float, um: float | None, n_blast: int = 25, n_lymph: int = 15) -> FieldResult:
    def cell(name: str, k: int) -> Cell:
        probs = np.array([0.9 if c.name == name else 0.05 for c in CLASSES], np.float32)
        return Cell((k * 300.0, 0.0, k * 300.0 + side, side), 0.9, name, 0.9, probs, 0.99, True)

    cells = [cell("blast", k) for k in range(n_blast)] + [cell("lymphocyte", n_blast + k) for k in range(n_lymph)]
    return FieldResult(0, "f0", 20000, 400, cells, scale=FieldScale(um, factor, 1))


def _tally(um: float | None, scale: ScaleSpec | None = SCALE) -> Tally:
    return Tally(CLASSES, load_rule_pack(), target_count=40, scale=scale, um_per_px=um)


def test_cells_of_the_bundles_size_pass_and_the_scale_is_said():
    tally = _tally(0.0875)
    tally.add(_field(150, 1.0, 0.0875))
    size = tally.size.check()
    assert size.state == "ok" and size.ratio == pytest.approx(1.0)
    assert tally.domain().state == "not_checked"  # no colour calibration here; the size adds nothing
    assert size.scale_sentence() == "scale: 0.0875 um/px"
    assert next(r for r in tally.rule_states() if r.id == "acute_leukaemia").state == "positive"


@pytest.mark.parametrize(
    ("um", "side", "factor", "words"),
    [
        (0.0875, 75, 1.0, r"0.50x the size .*\(set scale 0.0875 um/px\): objective or camera changed"),
        (0.0875, 300, 1.0, "2.00x the size"),
        (None, 300, 0.1, "0.20x the size .* and no scale is set for this camera"),  # a big camera's field, fitted
    ],
)
def test_cells_of_another_size_shift_the_slide_and_hold_its_rules(um, side, factor, words):
    tally = _tally(um)
    tally.add(_field(side, factor, um))
    domain = tally.domain()
    assert domain.state == "shifted"
    assert any(re.search(words, r) for r in domain.reasons), domain.reasons
    rule = next(r for r in tally.rule_states() if r.id == "acute_leukaemia")
    assert rule.state == "indeterminate" and "not reliable" in rule.note


def test_without_a_scale_a_size_within_the_bundles_training_range_is_said_not_judged():
    tally = _tally(None)
    tally.add(_field(300, 0.325, None))  # the demo's composed fields, fitted: cells at 0.65x the working size
    size = tally.size.check()
    assert size.state == "ok" and size.ratio == pytest.approx(0.65)
    assert size.reason() == "cells 0.65x the size the detector works at"
    assert size.scale_sentence().startswith("scale: not set")
    assert next(r for r in tally.rule_states() if r.id == "acute_leukaemia").state == "positive"


def test_too_few_cells_or_no_bundle_scale_judge_nothing():
    tally = _tally(0.0875)
    tally.add(_field(75, 1.0, 0.0875, n_blast=10, n_lymph=5))
    assert tally.size.check().state == "too_few_cells" and tally.size.check().cells == 5
    assert tally.domain().state == "not_checked"
    bare = _tally(None, scale=None)
    bare.add(_field(75, 1.0, None))
    assert bare.size.check().state == "not_checked" and bare.domain().state == "not_checked"
    watch = SizeWatch(SCALE)
    watch.add([(0, 0, 100, 300)], 0.5)  # the longer side, at the detector's scale
    assert watch._sides == [150.0]
