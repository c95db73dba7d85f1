"""Drafting a whole tree, level by level, for every tree kind.

Model-agnostic: the draft model is seen only through a level function
``(tree, level, state) -> ([B, P, V], state)``, the (already transformed) draft
law at each of the ``P`` nodes of level ``level`` given the tree drafted so far.
The engine implements it with one call of the draft model per level on its KV
cache (the state); tests implement it with n-gram tables. One call per level,
so ``L`` sequential draft calls. :func:`draft_batch` is the only drafting loop;
:func:`draft_tree` runs it on one unbatched tree.

Per level (docs/algorithms.md, Draft trees):

* chain / branching: each parent's children are its Gumbel-Top-``b_l`` ids;
* iid: every sequence draws one id from its own last node (level 1: ``K``
  i.i.d. draws from the root's law);
* beam: one stochastic-beam-search level of width ``W`` over all parents.

The draft law of every expanded node is returned: verification needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

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


class BeamCarry(NamedTuple):
    """Per-tree SBS state between levels: ``phi`` and perturbed ``score`` of the beam."""

    phi: Array
    score: Array


def init_carry(spec: tree_lib.TreeSpec, dtype=jnp.float32) -> BeamCarry:
    """Beam state of a tree holding only its root (``phi = G = 0``)."""
    del spec
    return BeamCarry(phi=jnp.zeros((1,), dtype), score=jnp.zeros((1,), dtype))


def expand_level(
    key: Array,
    spec: tree_lib.TreeSpec,
    tree: tree_lib.Tree,
    level: int,
    probs: Array,
    carry: BeamCarry,
    sbs_truncate: bool = True,
) -> tuple[tree_lib.Tree, BeamCarry]:
    """Draws the nodes of ``level`` (1..L) from the draft laws of level ``level - 1``.

    Args:
      key: PRNG key for this level.
      spec: static tree shape.
      tree: tree with levels ``< level`` filled in.
      level: static level to draw.
      probs: ``[P, V]`` draft law at each node of level ``level - 1``.
      carry: beam state (only used by ``beam`` trees; pass it through otherwise).
      sbs_truncate: beam only; False disables SBS truncation (test control).

    Returns:
      The tree with level ``level`` filled in, and the new beam state.
    """
    prev, cur = spec.level_slice(level - 1), spec.level_slice(level)
    log_p = transforms.safe_log(probs)
    parent_valid = tree.valid[prev]
    parents = tree.parents
    if spec.runtime_parents:  # beam: SBS picks parents and children together
        phi, score = carry.phi.astype(probs.dtype), carry.score.astype(probs.dtype)
        out = sbs.sbs_level(key, phi, score, parent_valid, log_p, spec.num_sequences, sbs_truncate)
        tokens, ok = out.token, out.valid
        parents = parents.at[cur].set(prev.start + out.parent)
        carry = BeamCarry(phi=out.phi, score=out.score)
    elif spec.sibling_law == "iid":  # every sequence draws from its own last node
        k = spec.num_sequences
        rows = jnp.broadcast_to(log_p[0], (k, log_p.shape[-1])) if level == 1 else log_p
        row_valid = jnp.broadcast_to(parent_valid[0], (k,)) if level == 1 else parent_valid
        tokens, ok, _ = gumbel.gumbel_top_k(key, rows, 1)
        tokens, ok = tokens[:, 0], ok[:, 0] & row_valid
    else:  # chain, branching
        tokens, ok, _ = gumbel.gumbel_top_k(key, log_p, spec.branching[level - 1])
        tokens = tokens.reshape(-1)
        ok = (ok & parent_valid[:, None]).reshape(-1)
    tree = tree._replace(
        tokens=tree.tokens.at[cur].set(tokens),
        valid=tree.valid.at[cur].set(ok),
        parents=parents,
    )
    return tree, carry


LevelFn = Callable[[tree_lib.Tree, int, Any], tuple[Array, Any]]


def draft_batch(
    keys: Array,
    spec: tree_lib.TreeSpec,
    root_tokens: Array,
    level_fn: LevelFn,
    fn_state: Any = None,
    sbs_truncate: bool = True,
) -> tuple[tree_lib.Tree, Array, Any]:
    """Drafts one tree of shape ``spec`` per row: the only drafting loop.

    Level ``l = 1..L`` is drawn from the draft laws at the nodes of level ``l - 1``,
    which ``level_fn`` supplies for the whole batch. A cached language model implements
    ``level_fn`` with one forward per level on its KV cache (``fn_state``); tables of
    known conditionals ignore the state.

    Args:
      keys: ``[B, 2]`` PRNG keys (level ``l`` of row ``b`` uses ``fold_in(keys[b], l)``).
      spec: static tree shape.
      root_tokens: ``[B]`` ids of the last committed tokens.
      level_fn: ``(tree, level, fn_state) -> (probs [B, P, V], fn_state)``: the draft law
        at the ``P`` nodes of ``level`` (0 = root) of the batched ``tree`` drafted so far;
        it must be exactly the law tokens are drawn from (same transforms as verification).
      fn_state: carried through ``level_fn`` (e.g. the draft model's cache).
      sbs_truncate: beam only; False disables SBS truncation (test control).

    Returns:
      ``(tree, draft_probs, fn_state)``: the batched tree, ``draft_probs`` ``[B, N+1, V]``
      the draft law at every internal node (rows of the last level are zeros: never used),
      and the final ``fn_state``.
    """
    tree = jax.vmap(lambda r: empty_tree(spec, r))(root_tokens)
    carry = jax.vmap(lambda _: init_carry(spec))(root_tokens)
    draft_probs = None
    for level in range(1, spec.depth + 1):
        probs, fn_state = level_fn(tree, level - 1, fn_state)
        if draft_probs is None:
            shape = (root_tokens.shape[0], spec.num_nodes + 1, probs.shape[-1])
            draft_probs = jnp.zeros(shape, probs.dtype)
        draft_probs = draft_probs.at[:, spec.level_slice(level - 1)].set(probs)
        level_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, level)

        def expand(k, t, p, c, level=level):
            return expand_level(k, spec, t, level, p, c, sbs_truncate)

        tree, carry = jax.vmap(expand)(level_keys, tree, probs, carry)
    return tree, draft_probs, fn_state


def draft_tree(
    key: Array,
    spec: tree_lib.TreeSpec,
    root_token: Array,
    draft_probs_fn: DraftProbsFn,
    sbs_truncate: bool = True,
) -> tuple[tree_lib.Tree, Array]:
    """Drafts a single tree (no batch axis) through :func:`draft_batch`.

    Args:
      key: PRNG key for drafting (level ``l`` uses ``fold_in(key, l)``).
      spec: static tree shape.
      root_token: id of the last committed token.
      draft_probs_fn: ``(tree, level) -> [P, V]`` draft law at the ``P`` nodes
        of ``level`` (0 = root) of the unbatched tree.
      sbs_truncate: beam only; False disables SBS truncation (test control).

    Returns:
      ``(tree, draft_probs)`` with ``draft_probs`` ``[N+1, V]`` (see :func:`draft_batch`).
    """

    def level_fn(tree, level, state):
        return draft_probs_fn(jax.tree.map(lambda x: x[0], tree), level)[None], state

    tree, draft_probs, _ = draft_batch(
        jnp.asarray(key)[None], spec, jnp.asarray(root_token)[None], level_fn, None, sbs_truncate
    )
    return jax.tree.map(lambda x: x[0], tree), draft_probs[0]
