"""Drafting a whole tree, level by level, for every tree kind.

Model-agnostic: the draft model is seen only through ``draft_probs_fn(tree,
level) -> [P, V]``, the (already transformed) draft law at each of the ``P``
nodes of level ``level`` given the tree drafted so far. A language model
implements it with one tree-attention call over that level; tests implement it
with n-gram tables. One call per level, so ``L`` sequential draft calls.

Per level (ALGORITHMS.md section 5):

* chain / branching: each parent's children are its Gumbel-Top-``b_l`` ids;
* iid: every sequence draws one id from its own last node (level 1: ``K``
  i.i.d. draws from the root's law);
* beam: one stochastic-beam-search level of width ``W`` over all parents.

The draft law of every expanded node is returned: verification needs it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rsd_jax import gumbel, sbs, transforms
from rsd_jax import tree as tree_lib

Array = jax.Array
DraftProbsFn = Callable[[tree_lib.Tree, int], Array]


def empty_tree(spec: tree_lib.TreeSpec, root_token: Array) -> tree_lib.Tree:
    """A tree holding only its root; node slots are invalid placeholders."""
    n = spec.num_nodes + 1
    static = spec.static_parents()
    parents = jnp.full((n,), -1, jnp.int32) if static is None else jnp.asarray(static)
    return tree_lib.Tree(
        tokens=jnp.zeros((n,), jnp.int32).at[0].set(jnp.asarray(root_token, jnp.int32)),
        parents=parents,
        valid=jnp.zeros((n,), jnp.bool_).at[0].set(True),
        depth=jnp.asarray(spec.depths),
    )


def draft_tree(
    key: Array,
    spec: tree_lib.TreeSpec,
    root_token: Array,
    draft_probs_fn: DraftProbsFn,
    sbs_truncate: bool = True,
) -> tuple[tree_lib.Tree, Array]:
    """Drafts a tree of shape ``spec`` below ``root_token``.

    Args:
      key: PRNG key for drafting (level ``l`` uses ``fold_in(key, l)``).
      spec: static tree shape.
      root_token: id of the last committed token.
      draft_probs_fn: ``(tree, level) -> [P, V]`` draft law at the ``P`` nodes
        of ``level`` (0 = root); must return exactly the law tokens are drawn
        from (same transforms as verification uses).
      sbs_truncate: beam only; False disables SBS truncation (test control).

    Returns:
      ``(tree, draft_probs)`` with ``draft_probs`` ``[N+1, V]``: the draft law
      at every internal node (rows of the last level are zeros: never used).
    """
    tree = empty_tree(spec, root_token)
    draft_probs = None
    phi = jnp.zeros((1,), jnp.float32)
    score = jnp.zeros((1,), jnp.float32)
    for level in range(1, spec.depth + 1):
        prev, cur = spec.level_slice(level - 1), spec.level_slice(level)
        probs = draft_probs_fn(tree, level - 1)
        if draft_probs is None:
            draft_probs = jnp.zeros((spec.num_nodes + 1, probs.shape[-1]), probs.dtype)
        draft_probs = draft_probs.at[prev].set(probs)
        log_p = transforms.safe_log(probs)
        parent_valid = tree.valid[prev]
        k_level = jax.random.fold_in(key, level)
        parents = tree.parents
        if spec.kind == "beam":
            if level == 1:
                phi, score = phi.astype(probs.dtype), score.astype(probs.dtype)
            out = sbs.sbs_level(
                k_level, phi, score, parent_valid, log_p, spec.num_sequences, sbs_truncate
            )
            tokens, ok = out.token, out.valid
            parents = parents.at[cur].set(prev.start + out.parent)
            phi, score = out.phi, out.score
        elif spec.kind == "iid":
            k = spec.num_sequences
            rows = jnp.broadcast_to(log_p[0], (k, log_p.shape[-1])) if level == 1 else log_p
            row_valid = jnp.broadcast_to(parent_valid[0], (k,)) if level == 1 else parent_valid
            tokens, ok, _ = gumbel.gumbel_top_k(k_level, rows, 1)
            tokens, ok = tokens[:, 0], ok[:, 0] & row_valid
        else:  # chain, branching
            b = spec.branching[level - 1]
            tokens, ok, _ = gumbel.gumbel_top_k(k_level, log_p, b)
            tokens = tokens.reshape(-1)
            ok = (ok & parent_valid[:, None]).reshape(-1)
        tree = tree._replace(
            tokens=tree.tokens.at[cur].set(tokens),
            valid=tree.valid.at[cur].set(ok),
            parents=parents,
        )
    return tree, draft_probs
