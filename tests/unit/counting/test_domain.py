"""Colour normalisation, the domain-shift guard, and what a shifted slide does to the rules."""

import numpy as np
import pytest

from edge.analysis.colour import apply_gains, background_gains, cell_colour_features, white_balance
from edge.analysis.field import Cell, FieldResult
from edge.counting.domain import DomainGuard
from edge.counting.rules import load_rule_pack
from edge.counting.tally import Tally
from edge.engines.bundle import ClassSpec, DomainGuardSpec

CLASSES = [
    ClassSpec(name="blast", role="key", aliases=["BLA"]),
    ClassSpec(name="lymphocyte", role="wbc", aliases=["LYT"]),
    ClassSpec(name="not_countable", role="not_countable", aliases=["NIF", "ART"]),
]
SPEC = DomainGuardSpec(
    mean=[0.3] * 6,
    inv_cov=np.diag([100.0] * 6).tolist(),  # per-cell sd 0.1 per feature
    max_colour_distance=1.0,
    min_mean_confidence=0.6,
    min_cells=5,
)


def _cell(name: str, colour, probability: float = 0.9, countable: bool = True) -> Cell:
    probs = np.array([probability if c.name == name else (1 - probability) / 2 for c in CLASSES], np.float32)
    return Cell((0, 0, 10, 10), 0.9, name, probability, probs, 0.99, countable, tuple(colour))


def _field(cells, index=0) -> FieldResult:
    return FieldResult(index, f"f{index}", 100, 100, cells)


def test_background_gains_turn_a_yellow_ground_grey():
    image = np.full((60, 80, 3), (240, 230, 150), np.uint8)  # zheng2018 dataset1's yellow background
    image[20:40, 30:50] = (120, 60, 110)  # a cell
    balanced = white_balance(image)
    ground = balanced[5, 5].astype(int)
    assert max(ground) - min(ground) <= 2, ground  # grey
    assert abs(int(ground.mean()) - 235) <= 2
    assert np.array_equal(apply_gains(image, np.ones(3, np.float32)), image)


def test_gains_are_bounded_on_a_black_image():
    gains = background_gains(np.zeros((10, 10, 3), np.uint8))
    assert np.all(gains <= 2.0)


def test_colour_features_see_the_stain_not_the_position():
    image = np.full((100, 100, 3), 235, np.uint8)
    image[10:40, 10:40] = (90, 40, 140)
    image[60:90, 60:90] = (90, 40, 140)
    features = cell_colour_features(image, np.array([[10, 10, 40, 40], [60, 60, 90, 90], [0, 0, 1, 1]], np.float32))
    assert features.shape == (3, 6)
    assert np.allclose(features[0], features[1])
    assert features[0, 1] > features[0, 0]  # green absorbed most: a violet stain
    assert np.all(features[2] == 0)  # a degenerate box gives zeros, not an error


def test_guard_without_calibration_does_not_judge():
    guard = DomainGuard(None)
    guard.add((0.3,) * 6, 0.9)
    assert guard.check().state == "not_checked"


def test_guard_waits_for_enough_cells_then_passes_a_familiar_slide():
    guard = DomainGuard(SPEC)
    rng = np.random.default_rng(0)
    for _ in range(4):
        guard.add(0.3 + rng.normal(0, 0.1, 6), 0.9)
    check = guard.check()
    assert check.state == "too_few_cells" and check.cells == 1
    for _ in range(40):
        guard.add(0.3 + rng.normal(0, 0.1, 6), 0.9)
    check = guard.check()
    assert check.state == "ok", check
    assert check.colour_distance < SPEC.max_colour_distance


@pytest.mark.parametrize(
    ("colour", "confidence", "reason"),
    [((0.6, 0.3, 0.3, 0.3, 0.3, 0.3), 0.9, "colour distance"), ((0.3,) * 6, 0.4, "mean confidence")],
)
def test_guard_trips_on_another_stain_or_unsure_cells(colour, confidence, reason):
    guard = DomainGuard(SPEC)
    for _ in range(10):
        guard.add(colour, confidence)
    check = guard.check()
    assert check.shifted
    assert reason in check.sentence() and "not reliable" in check.sentence()


def _tally(colour, n_blast=30, n_lymph=20) -> Tally:
    tally = Tally(CLASSES, load_rule_pack(), target_count=50, domain_guard=SPEC)
    cells = [_cell("blast", colour) for _ in range(n_blast)] + [_cell("lymphocyte", colour) for _ in range(n_lymph)]
    cells.append(_cell("not_countable", colour, countable=False))
    tally.add(_field(cells))
    return tally


def test_blast_rule_is_positive_on_a_familiar_slide_with_many_blasts():
    tally = _tally((0.3,) * 6)
    rule = next(r for r in tally.rule_states() if r.id == "acute_leukaemia")
    assert rule.state == "positive"
    assert tally.domain().state == "ok"
    assert tally.guard.cells == 50  # the not-countable cell is not judged


def test_a_shifted_slide_holds_every_rule_indeterminate():
    tally = _tally((0.8, 0.3, 0.3, 0.3, 0.3, 0.3))
    states = {r.id: r for r in tally.rule_states()}
    assert states["acute_leukaemia"].state == "indeterminate"
    assert "not reliable" in states["acute_leukaemia"].note
    assert states["acute_leukaemia"].percent == pytest.approx(60.0)  # the count is still shown
    assert states["ALL"].state == "not_applicable"  # no lymphoblast class: unchanged


def test_domain_guard_spec_refuses_a_bad_matrix():
    with pytest.raises(ValueError, match="inv_cov"):
        DomainGuardSpec(mean=[0.0, 0.0], inv_cov=[[1.0]], max_colour_distance=1.0, min_mean_confidence=0.5)


def test_a_slide_rich_in_one_class_is_not_a_shift_when_cells_are_taken_relative_to_their_class():
    # blasts stain darker than lymphocytes: a leukaemic slide moves the raw mean, not the class-relative one
    class_means = [[0.8] * 6, [0.3] * 6, [0.3] * 6]
    spec = SPEC.model_copy(update={"mean": [0.0] * 6, "class_means": class_means})
    raw = DomainGuard(SPEC)
    relative = DomainGuard(spec)
    for _ in range(40):
        raw.add((0.8,) * 6, 0.9, 0)
        relative.add((0.8,) * 6, 0.9, 0)
    assert raw.check().shifted  # without class means: a blast-rich slide looks like another stain
    assert relative.check().state == "ok"
    shifted = DomainGuard(spec)
    for _ in range(40):
        shifted.add((1.3,) * 6, 0.9, 0)  # every blast darker than blasts ever were: a new stain
    assert shifted.check().shifted
