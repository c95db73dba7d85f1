"""Static tree topologies: sizes, parents, depths, ancestor masks."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from rsd_jax import tree as tree_lib


@pytest.mark.parametrize(
    "spec,budget,depth,max_children",
    [
        (tree_lib.chain(4), 4, 4, 1),
        (tree_lib.iid(3, 2), 6, 2, 3),
        (tree_lib.branching((2, 2)), 6, 2, 2),
        (tree_lib.branching((2, 2, 2)), 14, 3, 2),
        (tree_lib.branching((2, 2, 2, 2)), 30, 4, 2),
        (tree_lib.branching((3, 1)), 6, 2, 3),
        (tree_lib.beam(3, 2), 6, 2, 3),
        (tree_lib.beam(6, 5), 30, 5, 6),
    ],
    ids=lambda x: x.describe() if isinstance(x, tree_lib.TreeSpec) else str(x),
)
def test_sizes(spec, budget, depth, max_children):
    assert spec.num_nodes == budget
    assert spec.depth == depth
    assert spec.max_children == max_children
    assert spec.depths.shape == (budget + 1,)
    assert spec.depths[0] == 0 and spec.depths[-1] == depth


# (spec, sibling_law, runtime_parents, is_chain)
QUESTIONS = [
    (tree_lib.autoregressive(), "without_replacement", False, True),
    (tree_lib.chain(3), "without_replacement", False, True),
    (tree_lib.iid(3, 2), "iid", False, False),
    (tree_lib.branching((2, 1)), "without_replacement", False, False),
    (
        tree_lib.branching((1, 1)),
        "without_replacement",
        False,
        False,
    ),  # drafted and checked as branching
    (tree_lib.beam(3, 2), "without_replacement", True, False),
]


@pytest.mark.parametrize(
    "spec,sibling_law,runtime_parents,is_chain",
    QUESTIONS,
    ids=lambda x: x.describe() if isinstance(x, tree_lib.TreeSpec) else str(x),
)
def test_questions_every_kind_answers(spec, sibling_law, runtime_parents, is_chain):
    assert spec.sibling_law == sibling_law
    assert spec.runtime_parents == runtime_parents
    assert (spec.static_parents() is None) == runtime_parents
    assert spec.is_chain == is_chain


def test_every_kind_is_asked():
    assert {case[0].kind for case in QUESTIONS} == set(tree_lib.KINDS)


def test_branching_parents_are_bfs():
    parents = tree_lib.branching((2, 3)).static_parents()
    np.testing.assert_array_equal(parents, [-1, 0, 0, 1, 1, 1, 2, 2, 2])


def test_iid_parents_follow_each_sequence():
    parents = tree_lib.iid(3, 3).static_parents()
    np.testing.assert_array_equal(parents, [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6])


def test_beam_parents_are_dynamic():
    assert tree_lib.beam(2, 2).static_parents() is None


def _brute_ancestors(parents):
    n = len(parents)
    mask = np.eye(n, dtype=bool)
    for i in range(n):
        j = parents[i]
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return mask


@pytest.mark.parametrize(
    "parents,depth",
    [
        (tree_lib.branching((2, 2, 2)).static_parents(), 3),
        (tree_lib.iid(2, 3).static_parents(), 3),
        (np.array([-1, 0, 0, 2, 1, 3]), 3),  # a beam-like dynamic layout
    ],
)
def test_ancestor_mask_matches_brute_force(parents, depth):
    mask = tree_lib.ancestor_mask(jnp.asarray(parents), depth)
    chex.assert_shape(mask, (len(parents), len(parents)))
    np.testing.assert_array_equal(mask, _brute_ancestors(parents))


@pytest.mark.parametrize(
    "make,args,msg",
    [
        (tree_lib.chain, (0,), "length"),
        (tree_lib.iid, (0, 2), "num_sequences"),
        (tree_lib.branching, ((2, 0),), "branching"),
        (tree_lib.branching, ((),), "branching"),
        (tree_lib.beam, (2, -1), "length"),
    ],
)
def test_bad_shapes_are_clear_errors(make, args, msg):
    with pytest.raises(ValueError, match=msg):
        make(*args)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown tree kind"):
        tree_lib.TreeSpec("star", (2,))
