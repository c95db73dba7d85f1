"""rsd_jax.drafting: tree shapes, parents, validity and recorded laws for every tree kind."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsd_jax import drafting
from rsd_jax import tree as tree_lib

V = 6
# Next-token law given the current token: every row has 4 possible ids (zeros at t, t + 1).
_RAW = np.random.default_rng(0).uniform(0.5, 1.5, (V, V))
for _t in range(V):
    _RAW[_t, [_t, (_t + 1) % V]] = 0.0
TABLE = jnp.asarray(_RAW / _RAW.sum(1, keepdims=True), jnp.float32)

SPECS = {
    "chain": tree_lib.chain(3),
    "iid": tree_lib.iid(2, 3),
    "branching": tree_lib.branching((2, 2)),
    "beam": tree_lib.beam(3, 2),
}


def _draft(spec, key, root=2, table=TABLE):
    def draft_probs_fn(tree, level):  # the law at each node of ``level``, from its token
        return table[tree.tokens[spec.level_slice(level)]]

    return drafting.draft_tree(key, spec, jnp.int32(root), draft_probs_fn)


@pytest.mark.parametrize("kind", SPECS)
@pytest.mark.parametrize("seed", range(3))
def test_a_drafted_tree_is_well_formed(kind, seed):
    spec = SPECS[kind]
    n = spec.num_nodes + 1
    tree, probs = _draft(spec, jax.random.PRNGKey(seed))
    chex.assert_shape([tree.tokens, tree.parents, tree.valid, tree.depth], (n,))
    chex.assert_shape(probs, (n, V))
    tokens, parents = np.asarray(tree.tokens), np.asarray(tree.parents)
    depth, valid = np.asarray(tree.depth), np.asarray(tree.valid)
    assert tokens[0] == 2 and parents[0] == -1
    np.testing.assert_array_equal(depth, spec.depths)
    assert valid.all()  # every law has 4 possible ids: enough for every sibling group
    for j in range(1, n):
        assert depth[parents[j]] == depth[j] - 1  # each node hangs off the level above
        assert TABLE[tokens[parents[j]], tokens[j]] > 0  # drawn from its parent's law
    if kind != "beam":
        np.testing.assert_array_equal(parents, spec.static_parents())
    for j in range(n):  # the law recorded at a node is the one its children came from
        want = TABLE[tokens[j]] if depth[j] < spec.depth else jnp.zeros(V)
        np.testing.assert_array_equal(np.asarray(probs[j]), np.asarray(want))


@pytest.mark.parametrize("kind", ["chain", "branching", "beam"])
def test_without_replacement_siblings_are_distinct(kind):
    spec = SPECS[kind]
    for seed in range(5):
        tree, _ = _draft(spec, jax.random.PRNGKey(seed))
        pairs = list(zip(np.asarray(tree.parents)[1:], np.asarray(tree.tokens)[1:], strict=True))
        assert len(set(pairs)) == len(pairs), pairs


def test_iid_sequences_may_repeat_each_other():
    spec = tree_lib.iid(8, 1)  # 8 i.i.d. draws from a law with 4 possible ids: must repeat
    tree, _ = _draft(spec, jax.random.PRNGKey(0))
    assert len(set(np.asarray(tree.tokens[1:]).tolist())) < 8
    assert bool(tree.valid.all())


@pytest.mark.parametrize(
    "spec, valid_per_level",
    [
        (tree_lib.branching((3, 2)), [1, 2]),  # one possible first id; its children: 2 of 4
        (tree_lib.beam(3, 2), [1, 3]),  # the beam refills from the one valid node
        (tree_lib.iid(3, 2), [3, 3]),  # i.i.d.: every draw is the one possible id
        (tree_lib.chain(2), [1, 1]),
    ],
)
def test_a_law_with_too_few_ids_leaves_nodes_invalid(spec, valid_per_level):
    table = TABLE.at[2].set(jnp.zeros(V).at[4].set(1.0))  # after token 2 only id 4
    tree, _ = _draft(spec, jax.random.PRNGKey(1), root=2, table=table)
    valid = np.asarray(tree.valid)
    got = [int(valid[spec.level_slice(level)].sum()) for level in (1, 2)]
    assert got == valid_per_level
    first = spec.level_slice(1)
    assert set(np.asarray(tree.tokens[first])[valid[first]].tolist()) == {4}
    for j in np.flatnonzero(valid)[1:]:  # a valid node never hangs off an invalid one
        assert valid[int(tree.parents[j])]


@pytest.mark.parametrize("kind", SPECS)
def test_batched_rows_equal_single_trees_and_the_same_key_redrafts_the_same_tree(kind):
    spec = SPECS[kind]
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    roots = jnp.array([2, 5], jnp.int32)

    def level_fn(tree, level, state):
        return TABLE[tree.tokens[:, spec.level_slice(level)]], state

    batch, probs, _ = drafting.draft_batch(keys, spec, roots, level_fn)
    for b in range(2):
        one, one_probs = _draft(spec, keys[b], root=int(roots[b]))
        chex.assert_trees_all_equal(jax.tree.map(lambda x, b=b: x[b], batch), one)
        chex.assert_trees_all_equal(probs[b], one_probs)
    again, _ = _draft(spec, keys[0], root=2)
    chex.assert_trees_all_equal(again, jax.tree.map(lambda x: x[0], batch))
