"""The optimal-transport bound: anchors, closed forms, an independent LP, a negative control.

Tolerances, fixed in advance: closed-form anchors and identities within
``lawcheck.EXACT_TOL = 1e-9`` (float64 enumeration; rounding is ~1e-15);
the subset formula against the LP optimum within ``LP_TOL = 1e-7`` (HiGHS'
default feasibility/optimality tolerances are ~1e-7 in the worst case, so the
comparison is as tight as the solver allows); a verifier may exceed the bound
by ``BOUND_SLACK = 1e-12`` (summation rounding) and never more. The negative
control must miss the LP by more than ``1e-3``, four orders above ``LP_TOL``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize

from rsd_jax import ot_bound
from tests import lawcheck

Q = np.array([0.2, 0.5, 0.3])
P = np.array([0.6, 0.3, 0.1])
LP_TOL = 1e-7
BOUND_SLACK = 1e-12

# (rule, k) -> exact acceptance on the anchor (docs/algorithms.md, Node verifiers).
KSEQ_2 = 0.52 + 0.4 * math.sqrt(0.44)  # rho^2 - 1.6 rho + 0.2 = 0, acceptance 0.2 + 0.4 rho
ANCHOR_ACCEPTANCE = {
    ("sd", 1): 0.6, ("mrs", 1): 0.6, ("kseq", 1): 0.6, ("rrs", 1): 0.6,
    ("mrs", 2): 0.76, ("kseq", 2): KSEQ_2, ("rrs", 2): 0.9,
    ("mrs", 3): 0.856, ("kseq", 3): 0.875, ("rrs", 3): 1.0,
}  # fmt: skip
# (k, replacement) -> (alpha*, minimising set). Without replacement, K=2: A = {2},
# 0.7 + 1 - [0.6 * 0.3 / 0.4 + 0.3 * 0.6 / 0.7]; K=3 draws every token, alpha* = 1.
ANCHOR_BOUND = {
    (1, True): (0.6, (1, 2)),
    (1, False): (0.6, (1, 2)),
    (2, True): (0.84, (1, 2)),
    (2, False): (0.7 + 1 - (0.45 + 0.18 / 0.7), (2,)),
    (3, True): (0.7 + 1 - 0.9**3, (2,)),
    (3, False): (1.0, None),
}


def random_cases(seed: int = 7):
    """(q, p, k, replacement) over V = 3..5, K = 1..3, both draft laws, some peaked."""
    rng = np.random.default_rng(seed)
    cases = []
    for v in (3, 4, 5):
        for k in (1, 2, 3):
            for replacement in (True, False):
                conc = 0.3 if (v + k) % 2 else 1.0
                cases.append(
                    (rng.dirichlet(np.full(v, conc)), rng.dirichlet(np.ones(v)), k, replacement)
                )
    return cases


def brute_bound(q, set_law: dict, with_q_term: bool = True) -> float:
    """The subset formula evaluated naively, one set A at a time (``with_q_term=False``:
    a deliberately wrong bound that drops ``q(V \\ A)``)."""
    v = len(q)
    best = np.inf
    for mask in range(1 << v):
        a = {x for x in range(v) if (mask >> x) & 1}
        meets = sum(prob for s, prob in set_law.items() if a & set(s))
        outside = sum(q[x] for x in range(v) if x not in a) if with_q_term else 0.0
        best = min(best, outside + meets)
    return best


def lp_alpha(q, set_law: dict) -> float:
    """max P(Y in S) over joint laws of (S, Y) with marginals set_law and q (HiGHS LP)."""
    sets = list(set_law)
    v = len(q)
    n = len(sets) * v  # variable (i, y) at i * v + y
    gain = np.array([float(y in s) for s in sets for y in range(v)])
    rows, rhs = [], []
    for i, s in enumerate(sets):  # sum_y pi(s, y) = D(s)
        row = np.zeros(n)
        row[i * v : (i + 1) * v] = 1
        rows.append(row)
        rhs.append(set_law[s])
    for y in range(v):  # sum_s pi(s, y) = q(y)
        row = np.zeros(n)
        row[y::v] = 1
        rows.append(row)
        rhs.append(q[y])
    res = optimize.linprog(-gain, A_eq=np.array(rows), b_eq=np.array(rhs), bounds=(0, None))
    assert res.status == 0, res.message
    return -res.fun


@pytest.mark.parametrize("k,replacement", list(ANCHOR_BOUND))
def test_anchor_bound(k, replacement):
    value, subset = ANCHOR_BOUND[k, replacement]
    bound = ot_bound.alpha_star(Q, P, k, replacement)
    assert abs(bound.value - value) < lawcheck.EXACT_TOL
    if subset is not None:
        assert bound.subset == subset


@pytest.mark.parametrize("rule,k", list(ANCHOR_ACCEPTANCE))
def test_anchor_acceptance_and_gap(rule, k):
    acc = ot_bound.verifier_acceptance(Q, P, k, rule)
    assert abs(acc - ANCHOR_ACCEPTANCE[rule, k]) < lawcheck.EXACT_TOL
    bound = ANCHOR_BOUND[k, ot_bound.uses_replacement(rule)][0]
    assert abs(ot_bound.gap(Q, P, k, rule) - (bound - acc)) < lawcheck.EXACT_TOL


def test_set_law_is_a_distribution_of_the_right_sets():
    law = ot_bound.draft_set_law(P, 2, replacement=False)
    assert set(law) == {(0, 1), (0, 2), (1, 2)}
    assert abs(law[0, 1] - (0.6 * 0.3 / 0.4 + 0.3 * 0.6 / 0.7)) < lawcheck.EXACT_TOL
    law = ot_bound.draft_set_law(P, 2, replacement=True)
    assert abs(law[(0,)] - 0.36) < lawcheck.EXACT_TOL and abs(law[0, 2] - 0.12) < lawcheck.EXACT_TOL
    assert abs(sum(law.values()) - 1) < lawcheck.EXACT_TOL
    # Support smaller than K: every draw is the whole support.
    assert ot_bound.draft_set_law([0.5, 0.5, 0.0], 3, replacement=False) == {(0, 1): 1.0}


def test_one_draft_is_one_minus_tv():
    rng = np.random.default_rng(3)
    for v in range(2, 9):
        q, p = rng.dirichlet(np.full(v, 0.5)), rng.dirichlet(np.ones(v))
        tv = 0.5 * np.abs(q - p).sum()
        for replacement in (True, False):
            assert abs(ot_bound.alpha_star(q, p, 1, replacement).value - (1 - tv)) < 1e-9
        assert abs(ot_bound.verifier_acceptance(q, p, 1, "sd") - (1 - tv)) < 1e-9


@pytest.mark.parametrize("case", range(len(random_cases())))
def test_subset_formula_equals_lp_and_bounds_every_verifier(case):
    q, p, k, replacement = random_cases()[case]
    bound = ot_bound.alpha_star(q, p, k, replacement)
    law = ot_bound.draft_set_law(p, k, replacement)
    assert abs(bound.value - lp_alpha(q, law)) < LP_TOL
    assert abs(bound.value - brute_bound(q, law)) < lawcheck.EXACT_TOL
    # The generic set-law route agrees with the i.i.d. closed form.
    assert abs(ot_bound.alpha_star_of_set_law(q, law).value - bound.value) < lawcheck.EXACT_TOL
    if replacement:
        rules = ["mrs", "kseq"] + (["sd"] if k == 1 else [])
    else:
        rules = ["rrs"]
    for rule in rules:
        assert ot_bound.verifier_acceptance(q, p, k, rule) <= bound.value + BOUND_SLACK, rule


def test_negative_control_wrong_bounds_disagree_with_lp():
    """The LP comparison can fail: two plausible mistakes miss it by far more than LP_TOL."""
    iid_for_wor, no_q_term = 0.0, 0.0
    for q, p, k, replacement in random_cases():
        lp = lp_alpha(q, ot_bound.draft_set_law(p, k, replacement))
        if not replacement:  # i.i.d. probabilities for without-replacement drafts
            iid_for_wor = max(iid_for_wor, abs(ot_bound.alpha_star(q, p, k, True).value - lp))
        no_q = brute_bound(q, ot_bound.draft_set_law(p, k, replacement), with_q_term=False)
        no_q_term = max(no_q_term, abs(no_q - lp))
    assert iid_for_wor > 1e-3
    assert no_q_term > 1e-3


def test_support_smaller_than_k_and_degenerate_laws():
    q, p = np.array([0.5, 0.5, 0.0, 0.0]), np.array([0.0, 0.2, 0.8, 0.0])
    assert abs(ot_bound.alpha_star(q, p, 3, False).value - 0.5) < lawcheck.EXACT_TOL
    assert abs(ot_bound.verifier_acceptance(q, p, 3, "rrs") - 0.5) < lawcheck.EXACT_TOL
    same = np.array([0.1, 0.2, 0.7])
    assert abs(ot_bound.alpha_star(same, same, 2, True).value - 1.0) < lawcheck.EXACT_TOL
    assert abs(ot_bound.verifier_acceptance(same, same, 2, "kseq") - 1.0) < lawcheck.EXACT_TOL


@pytest.mark.parametrize(
    "q,p,k,match",
    [
        (np.full(21, 1 / 21), np.full(21, 1 / 21), 1, "V <= 20"),
        ([0.5, 0.6], [0.5, 0.5], 1, "sum to 1"),
        ([1.5, -0.5], [0.5, 0.5], 1, "non-negative"),
        ([0.5, 0.5], [1.0], 1, "same length"),
        ([[0.5, 0.5]], [0.5, 0.5], 1, "1-D"),
        ([0.5, 0.5], [0.5, 0.5], 0, "positive integer"),
    ],
)
def test_invalid_inputs_raise(q, p, k, match):
    with pytest.raises(ValueError, match=match):
        ot_bound.alpha_star(q, p, k, True)


def test_sd_needs_one_child_and_unknown_rule():
    with pytest.raises(ValueError, match="one child"):
        ot_bound.verifier_acceptance(Q, P, 2, "sd")
    with pytest.raises(ValueError, match="unknown verifier"):
        ot_bound.verifier_acceptance(Q, P, 2, "nope")
