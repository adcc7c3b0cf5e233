import numpy as np
import pytest

from edge.analysis.field import Cell, FieldResult
from edge.counting.intervals import cells_to_settle, wilson
from edge.counting.rules import RuleSpec, evaluate, load_rule_pack
from edge.counting.tally import Tally
from edge.engines.bundle import ClassSpec
from edge.errors import ConfigError


def test_wilson_known_values():
    # Reference values of the Wilson score interval at 95%
    low, high = wilson(5, 20)
    assert low == pytest.approx(0.1119, abs=1e-4) and high == pytest.approx(0.4687, abs=1e-4)
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(30, 100, 0.99)[1] - wilson(30, 100, 0.99)[0] > wilson(30, 100)[1] - wilson(30, 100)[0]


@pytest.mark.parametrize(("k", "n", "threshold"), [(5, 20, 0.2), (3, 10, 0.2), (24, 100, 0.2), (0, 30, 0.01)])
def test_cells_to_settle_is_the_smallest_that_settles(k, n, threshold):
    more = cells_to_settle(k, n, threshold, 0.95)
    assert more is not None and more > 0
    p = k / n

    def settled(total):
        low, high = wilson(p * total, total)
        return low > threshold or high <= threshold

    assert settled(n + more)
    assert not settled(n + more - 1)


def test_cells_to_settle_cannot_settle():
    assert cells_to_settle(0, 0, 0.2, 0.95) is None
    assert cells_to_settle(20, 100, 0.2, 0.95) is None  # exactly on the threshold
    assert cells_to_settle(30, 40, 0.2, 0.95) == 0  # already settled


RULE = RuleSpec.model_validate({"id": "ALL", "label": "ALL", "class": "lymphoblast", "above_percent": 20})


def test_rule_states():
    known = {"lymphoblast"}
    assert evaluate(RULE, 60, 100, known, 0.95).state == "positive"
    assert evaluate(RULE, 5, 100, known, 0.95).state == "negative"
    middle = evaluate(RULE, 22, 100, known, 0.95)
    assert middle.state == "indeterminate" and middle.cells_to_settle > 0
    assert "more would settle it" in middle.note
    assert evaluate(RULE, 0, 0, known, 0.95).state == "indeterminate"
    assert evaluate(RULE, 5, 100, {"lymphocyte"}, 0.95).state == "not_applicable"


def test_default_rule_pack_and_bad_packs(tmp_path):
    pack = load_rule_pack()
    all_rule = next(r for r in pack.rules if r.id == "ALL")
    assert (all_rule.class_name, all_rule.above_percent) == ("lymphoblast", 20)
    assert "not a diagnosis" in pack.disclaimer
    bad = tmp_path / "r.yaml"
    bad.write_text("version: 1\ndisclaimer: x\nrules:\n  - id: A\n    label: a\n    class: x\n    above_percent: 120\n")
    with pytest.raises(ConfigError, match="invalid rule pack"):
        load_rule_pack(bad)
    with pytest.raises(ConfigError, match="cannot read rule pack"):
        load_rule_pack(tmp_path / "absent.yaml")


def _cell(name: str, countable: bool = True) -> Cell:
    return Cell((0, 0, 1, 1), 0.9, name, 0.8, np.zeros(3, np.float32), 0.9 if countable else 0.1, countable)


def test_tally_counts_denominator_and_skips():
    classes = [
        ClassSpec(name="lymphoblast", role="key"),
        ClassSpec(name="lymphocyte", role="wbc"),
        ClassSpec(name="platelet", role="not_countable"),
    ]
    tally = Tally(classes, load_rule_pack(), target_count=4)
    tally.add(FieldResult(0, "a", 10, 10, [_cell("lymphoblast"), _cell("lymphocyte"), _cell("lymphocyte", False)]))
    tally.add(FieldResult(1, "b", 10, 10, [_cell("lymphoblast")]))
    tally.skip("c", "truncated")
    assert tally.fields == 2 and tally.cells_detected == 4 and tally.not_countable == 1
    assert tally.denominator == 3 and tally.progress == pytest.approx(0.75)
    shares = {s.name: s for s in tally.shares()}
    assert set(shares) == {"lymphoblast", "lymphocyte"}
    assert shares["lymphoblast"].percent == pytest.approx(200 / 3)
    states = {r.id: r for r in tally.rule_states()}
    assert states["ALL"].percent == pytest.approx(200 / 3)
    assert states["M3"].state == "not_applicable"
    assert [s.source for s in tally.skipped] == ["c"]
