"""The exact per-round diagnostics agree with what sampling produces.

Each test compares an exact expectation, summed over the rounds of many toy
generations, with the sampled total: |z| <= Z_MAX (fixed in advance). The
negative control swaps in the other verifier's expectation, which must be
rejected, so the comparison can fail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import testing
from rsd_jax import generation as gen

Z_MAX = 4.0


def _run(method, rows=96, tokens=40, seed=0):
    target, draft, _ = testing.toy_pair(seed=3, agreement=0.5)
    prompts = [[1, 2, 3], [0, 3], [2, 2, 1], [3, 1]] * (rows // 4)
    return gen.generate(
        target,
        draft,
        prompts,
        method,
        key=jax.random.PRNGKey(seed),
        max_new_tokens=tokens,
        probes=True,
    ).counters


def _z(sampled_per_round, expected_per_round):
    """z statistic of sum(sampled - expected) over rounds (variance from the sample)."""
    diff = np.asarray(sampled_per_round, float) - np.asarray(expected_per_round, float)
    return diff.sum() / (diff.std() * np.sqrt(len(diff)) + 1e-12)


def _per_round(method, column, rows=96):
    """Per-row totals: each row's rounds summed (rows are independent)."""
    c = _run(method, rows=rows)
    return c.generated, c.probes.expected_tokens[:, column], c


@pytest.mark.parametrize("method,column", [("rsd_c:2-2", 0), ("rsd_c:2-2/tv", 1), ("sd:3/tv", 1)])
def test_expected_tokens_match_sampled_tokens(method, column):
    generated, expected, c = _per_round(method, column)
    # Rows are independent; per-row totals make the z-test exact enough at 96 rows.
    assert abs(_z(generated, expected)) <= Z_MAX
    assert np.all(c.probes.rank_count.sum((1, 2)) > 0)


def test_negative_control_other_verifier():
    """SD's sampled tokens are rejected against block verification's expectation (+5%)."""
    generated, expected, _ = _per_round("sd:4", 1, rows=256)
    assert abs(_z(generated, expected)) > Z_MAX


def test_rank_acceptance_matches_sampled_first_level():
    """A_0(b) at the root, averaged, is the probability that level 1 accepts something."""
    c = _run("rsd_c:3-1")
    accepted_level1 = c.accepted_hist[:, 1:].sum(axis=1)  # rounds accepting >= 1 token
    a0 = c.probes.rank_accept[:, 0, :]  # [rows, K]
    n0 = c.probes.rank_count[:, 0, :]
    assert np.all(n0[:, 2] == c.target_calls)  # the root always has 3 children
    assert abs(_z(accepted_level1, a0[:, 2])) <= Z_MAX
    means = a0.sum(0) / n0.sum(0)
    assert np.all(np.diff(means) >= 0) and means[0] < means[2]  # more siblings, more acceptance
    assert abs(_z(accepted_level1, a0[:, 0])) > Z_MAX  # b = 1 predicts less: rejected


def test_rank_acceptance_counts_nodes_with_exhausted_support():
    """A node whose draft support is smaller than the branching counts for every b."""
    from rsd_jax import probes, verify
    from rsd_jax import tree as tree_lib

    spec = tree_lib.branching((3,))
    q = jnp.array([[0.5, 0.3, 0.2, 0.0]] * 4, jnp.float32)
    p = jnp.array([[0.6, 0.4, 0.0, 0.0]] * 4, jnp.float32)  # support 2 < 3
    tree = tree_lib.Tree(
        tokens=jnp.array([0, 0, 1, 0], jnp.int32),
        parents=jnp.array([-1, 0, 0, 0], jnp.int32),
        valid=jnp.array([True, True, True, False]),
        depth=jnp.array([0, 1, 1, 1], jnp.int32),
    )
    from rsd_jax import walk

    walk_result = walk.WalkResult(  # nothing accepted: only the root is visited
        path=np.array([-1], np.int32),
        num_accepted=np.int32(0),
        tokens=np.array([2, -1], np.int32),
        num_emitted=np.int32(1),
        hit_eos=np.bool_(False),
    )
    out = probes.round_probes(spec, verify.get_verifier("rrs"), tree, q, p, walk_result)
    np.testing.assert_array_equal(out.rank_count[0], [1, 1, 1])
    a = np.asarray(out.rank_accept[0])
    assert a[2] == a[1]  # b = 3 has no third child: the same node, the same acceptance
    # Drawn X1 = 0: accepted w.p. q(0)/p(0); after a rejection the residual puts no mass on 1.
    np.testing.assert_allclose(a, [0.5 / 0.6] * 3, rtol=1e-6)
