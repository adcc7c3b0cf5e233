"""The stage-1 countable threshold rule (training.bundle.countable) on made-up validation cells."""

from __future__ import annotations

import numpy as np
import pytest

from training.bundle.countable import GRID, ValidationCells, choose


def cells(junk_p: list[float], white_p: list[float], blast_p: list[float]) -> ValidationCells:
    """NIF cells, lymphocytes and blasts with the given P(countable); stage 2 lets every one count."""
    codes = ["NIF"] * len(junk_p) + ["LYT"] * len(white_p) + ["BLA"] * len(blast_p)
    p = np.array([*junk_p, *white_p, *blast_p])
    return ValidationCells(np.array(codes), p, np.ones(len(codes), bool))


def test_lowest_threshold_that_meets_the_target_within_the_loss_allowed() -> None:
    # NIF at 0.55..0.75: 0.80 is the first grid point that counts none of them
    chosen, rows = choose(cells([0.55, 0.62, 0.68, 0.75], [0.99] * 10, [0.97] * 10), target=0.0)
    assert chosen == 0.8
    assert [r.threshold for r in rows] == list(GRID)
    assert rows[0].junk_counted == 1.0 and rows[0].white_lost == 0.0


def test_no_threshold_may_cost_more_blasts_than_allowed() -> None:
    # the NIF cell goes at 0.65; so does one blast in ten (10 points, beyond the 3 allowed)
    assert choose(cells([0.62], [0.99] * 10, [0.99] * 10), target=0.0)[0] == 0.65
    chosen, _ = choose(cells([0.62], [0.99] * 10, [0.99] * 9 + [0.6]), target=0.0)
    assert chosen == 0.5


def test_target_out_of_reach_takes_the_fewest_junk_counted_within_the_loss() -> None:
    # the NIF cell at 0.97 is never dropped; the one at 0.52 goes at 0.55 already: ties go to the lowest
    chosen, rows = choose(cells([0.97, 0.52], [0.99] * 10, [0.99] * 10), target=0.0)
    assert chosen == 0.55
    assert rows[1].junk_counted == 0.5


def test_the_class_a_cell_is_called_counts_too() -> None:
    mixed = cells([0.99, 0.99], [0.99] * 4, [0.99] * 4)
    called_not_countable = ValidationCells(mixed.codes, mixed.p_countable, mixed.codes != "NIF")
    row = called_not_countable.row(0.5)
    assert row.junk_counted == 0.0 and row.white_lost == 0.0 and row.blast_lost == 0.0
    assert mixed.row(0.5).junk_counted == pytest.approx(1.0)


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "abc", "nan"])
def test_marrow_bundle_refuses_a_threshold_that_is_no_probability_before_any_work(bad, tmp_path, capsys) -> None:
    from training.bundle.marrow_bundle import main

    with pytest.raises(SystemExit) as stop:
        main(["--countable-threshold", bad, "--out", str(tmp_path / "b")])
    assert stop.value.code == 2
    assert "give 'auto' or a number from 0 to 1" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
