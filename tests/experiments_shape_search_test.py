"""Budget-aware shape search: candidate enumeration, the efficiency model, the choice."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from experiments import shape_search as ss


def _table(rows):
    a = np.asarray(rows, float)
    return ss.AcceptanceTable(a, np.where(np.isnan(a), 0, 10).astype(np.int64))


@pytest.mark.parametrize("budget,width,depth", [(6, 3, 3), (10, 4, 4), (14, 3, 6), (30, 5, 5)])
def test_candidates_are_exactly_the_shapes_with_budget_nodes(budget, width, depth):
    got = set(ss.shapes_for_budget(budget, width, depth))
    brute = {
        c
        for length in range(1, depth + 1)
        for c in itertools.product(range(1, width + 1), repeat=length)
        if ss.nodes(c) == budget
    }
    assert got == brute and got


def test_known_shapes_and_nodes():
    assert ss.nodes((2, 2)) == 6 and ss.nodes((2, 2, 2, 2)) == 30 and ss.nodes((3, 2, 1, 1)) == 21
    assert (2, 2) in ss.shapes_for_budget(6, 3, 2)


def test_predicted_efficiency_closed_form():
    t = _table([[0.5, 0.7, 0.8]] * 2)
    assert ss.predicted_efficiency(t, (1, 1)) == pytest.approx(1 + 0.5 + 0.25)
    assert ss.predicted_efficiency(t, (2, 3, 1)) == pytest.approx(
        1 + 0.7 + 0.7 * 0.8 + 0.7 * 0.8 * 0.5
    )


def test_choice_follows_the_acceptance_profile():
    agree = _table([[0.9, 0.92, 0.93]])  # draft agrees well: depth pays more than width
    assert ss.best_branching(agree, 6, max_depth=6)[0] == (1, 1, 1, 1, 1, 1)
    unsure = _table([[0.3, 0.6, 0.8]])  # rank 1 is often wrong: width pays
    assert ss.best_branching(unsure, 6, max_depth=6)[0] in {(3, 1), (2, 2)}
    # A draft-cost model shortens the tree.
    shape, _, _ = ss.best_branching(agree, 6, max_depth=6, draft_cost=0.5)
    assert len(shape) < 6


def test_best_is_the_maximum_of_the_ranked_list():
    t = _table([[0.6, 0.75, 0.82, 0.86], [0.55, 0.7, 0.8, 0.85]])
    shape, value, ranked = ss.best_branching(t, 14, max_depth=5)
    assert value == max(v for _, v in ranked) and ss.nodes(shape) == 14
    assert value == pytest.approx(ss.predicted_efficiency(t, shape))


def test_calibration_table_pools_sums_and_counts():
    sums = np.zeros((2, 2, 3))
    counts = np.zeros((2, 2, 3), int)
    sums[0, 0] = [0.5, 0.7, 0.9]
    counts[0, 0] = 1
    sums[1, 0] = [0.3, 0.5, 0.7]
    counts[1, 0] = 1
    t = ss.calibration_table(sums, counts)
    np.testing.assert_allclose(t.accept[0], [0.4, 0.6, 0.8])
    assert np.isnan(t.accept[1]).all()
    assert t.rate(3, 2) == pytest.approx(0.6)  # deeper rows fall back to the deepest measured
    assert ss.AcceptanceTable.from_json(t.to_json()).count.tolist() == t.count.tolist()


def test_errors():
    t = _table([[0.5, 0.6]])
    with pytest.raises(ValueError, match="calibrated widths"):
        t.rate(0, 3)
    with pytest.raises(ValueError, match="no RSD-C branching"):
        ss.best_branching(t, 30, max_depth=2)
