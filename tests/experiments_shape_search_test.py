"""Budget-aware shape search: candidate enumeration, the efficiency model, the choice."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from experiments.speculative import shape_search as ss


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


# The search's premise, exactly (float64 enumeration of every drafted tree, toy tables):
# an RSD-C shape whose first-child path is a chain of depth L scores at least that chain's
# expected tokens per round under recursive rejection. Coupled on the same uniforms, the
# chain's tests are the tree's first-child tests, and where the chain stops the tree may
# still accept a sibling. So at a budget where the SD chain is the best hand-picked
# shape, an auto shape that contains it cannot lose in expectation.
NESTED = [
    ((1, 1, 2), 4),
    ((1, 2, 1), 4),
    ((2, 1, 1), 3),
    ((2, 2, 1), 3),
]


def _expected_tokens(branching, vocab, seed, verifier):
    import jax

    from rsd_jax import tree as tree_lib
    from rsd_jax import verify
    from tests import lawcheck
    from tests.walk_test import PREFIX, _tables

    spec = tree_lib.branching(branching)
    draft, target = _tables(vocab, seed, alpha=0.6)
    with jax.enable_x64(True):
        law = lawcheck.exact_round_law(spec, verify.get_verifier(verifier), draft, target, PREFIX)
    return sum(len(seq) * mass for seq, mass in law.items())


@pytest.mark.parametrize("branching,vocab", NESTED)
def test_a_tree_containing_the_chain_never_scores_less(branching, vocab):
    chain = (1,) * len(branching)
    gains = [
        _expected_tokens(branching, vocab, seed, "rrs") - _expected_tokens(chain, vocab, seed, "sd")
        for seed in range(4)
    ]
    assert min(gains) >= -1e-12, gains
    assert max(gains) > 1e-3, gains  # strictly better somewhere: the comparison has teeth


def test_shapes_not_containing_the_chain_can_score_less():
    """Negative control: a wide shallow tree with more nodes loses to the deeper chain."""
    gains = [
        _expected_tokens((3,), 4, seed, "rrs") - _expected_tokens((1, 1, 1), 4, seed, "sd")
        for seed in range(4)
    ]
    assert min(gains) < -1e-3, gains


def test_predicted_rate_by_hand():
    t = _table([[0.5, 0.7, 0.8]] * 2)
    costs = ss.CostCurves(target={1: 10.0, 8: 10.0, 16: 20.0}, draft={1: 1.0, 4: 4.0})
    assert ss.level_widths((2, 3, 1)) == [1, 2, 6]
    assert ss.curve_seconds(costs.target, 12) == pytest.approx(15.0)
    assert ss.curve_seconds(costs.draft, 6) == pytest.approx(6.0)  # the last slope, extended
    # (2, 2): eta = 1 + 0.7 + 0.49; draft levels of 1 and 2 nodes (1 + 2 s); target 7 tokens
    want = (1 + 0.7 + 0.7 * 0.7) * 10.0 / (1.0 + 2.0 + 10.0)
    assert ss.predicted_rate(t, (2, 2), costs) == pytest.approx(want)
    again = ss.CostCurves.from_json(costs.to_json())
    assert again == costs


def test_rate_choice_agrees_with_efficiency_when_forwards_are_free_of_width_and_draft():
    """Negative control for the cost model: with a free draft and a target whose cost does
    not grow with scored tokens, the best predicted rate is the best predicted efficiency;
    a target that slows with width moves the choice."""
    t = _table([[0.6, 0.75, 0.82, 0.86], [0.55, 0.7, 0.8, 0.85]])
    flat = ss.CostCurves(target={1: 1.0}, draft={1: 0.0})
    for budget in (6, 10, 14):
        assert ss.best_rate_branching(t, budget, 5, flat)[0] == ss.best_branching(t, budget, 5)[0]
    # a costly draft call: fewer levels win
    dear = ss.CostCurves(target={1: 1.0}, draft={1: 1.0})
    assert len(ss.best_rate_branching(t, 14, 5, dear)[0]) < len(ss.best_branching(t, 14, 5)[0])


def test_race_finalists_are_the_cost_models_leaders_over_all_sizes_plus_its_best_chain():
    from experiments.speculative import race

    t = _table([[0.6, 0.75, 0.82, 0.86], [0.55, 0.7, 0.8, 0.85]])
    costs = ss.CostCurves(target={1: 1.0, 7: 1.1, 31: 2.0}, draft={1: 0.05, 8: 0.2})
    got = race.finalists(t, costs, max_budget=14, max_depth=5, count=3)
    rated = sorted(
        (
            (ss.predicted_rate(t, s, costs), s)
            for b in range(1, 15)
            for s in ss.shapes_for_budget(b, 4, 5)
        ),
        key=lambda x: (-x[0], len(x[1])),
    )
    assert got[:3] == [s for _, s in rated[:3]]  # the leaders, best first, any size
    chain = next(s for _, s in rated if set(s) == {1})
    assert chain in got and len(got) == (3 if chain in got[:3] else 4)
    # a cheap draft and a flat target: wide trees lead, so the chain is appended
    flat = ss.CostCurves(target={1: 1.0}, draft={1: 0.0})
    got = race.finalists(t, flat, max_budget=14, max_depth=5, count=2)
    assert len(got) == 3 and set(got[-1]) == {1} and all(ss.nodes(s) == 14 for s in got[:2])


def test_race_winner_is_the_fastest_and_the_better_predicted_on_a_tie():
    from experiments.speculative import race

    assert race.winner({"rsd_c:3-1": 10.0, "rsd_c:1-1": 12.5, "rsd_c:2": 9.0}) == "rsd_c:1-1"
    assert race.winner({"rsd_c:3-1": 10.0, "rsd_c:1-1": 10.0}) == "rsd_c:3-1"
