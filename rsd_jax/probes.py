"""Exact per-round diagnostics, computed on the trees a real run drafts (optional).

Two measurements that sampling alone gives only noisily:

* **Expected tokens per target call under two verifiers on the same tree.**
  For the drafted tree and its laws ``q``, ``p``, the walk's
  (:func:`rsd_jax.walk.output_law`) and traversal's
  (:func:`rsd_jax.traversal.output_law`) exact outcome laws give
  ``E[accepted depth + 1]`` for each rule. Averaged over the rounds of a run,
  this is a paired, low-variance comparison of verifiers on identical trees
  (the sampled block efficiency of separate runs differs also by which trees
  were drafted).
* **Acceptance by sibling rank**, for shape search: at each node the walk
  visits on its accepted path (depth ``d``, ``0`` = root), with ``K``
  without-replacement children, the exact probability that one of the first
  ``b`` children is accepted, ``A_d(b) = 1 - prod_{k <= b} (1 - a_k)``, for
  every ``b <= K``. The first ``b`` children of a without-replacement sample
  are themselves one, and recursive rejection never looks at later children,
  so one wide calibration tree estimates ``A_d(b)`` for all narrower ones.
  In RSD-C trees a node with fewer valid children than its branching has
  exhausted the draft's support (after top-k / top-p), and a tree of any
  width would draft the same children there: such nodes count for every
  ``b`` with their full acceptance (leaving them out would bias ``A_d(b)``
  towards flat, low-acceptance contexts for large ``b``). In RSD-S trees the
  beam decides child counts, so only real children count.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rsd_jax import traversal, verify, walk
from rsd_jax import tree as tree_lib

Array = jax.Array


class RoundProbes(NamedTuple):
    """One round's diagnostics.

    Attributes:
      expected_tokens: ``[2]`` exact expected tokens per call on this tree under
        the method's node walk and under traversal (NaN where traversal does
        not apply: i.i.d. trees).
      rank_accept: ``[L, K]`` ``A_d(b)`` at the visited node of depth ``d``
        (0 where not visited or fewer than ``b`` children).
      rank_count: ``[L, K]`` 1 where ``rank_accept`` holds a value.
    """

    expected_tokens: Array
    rank_accept: Array
    rank_count: Array


def zeros(spec: tree_lib.TreeSpec, batch: int) -> RoundProbes:
    """Zero accumulators for a batch (shapes fixed by the spec)."""
    depth, width = max(spec.depth, 1), max(spec.max_children, 1)
    return RoundProbes(
        expected_tokens=jnp.zeros((batch, 2), jnp.float32),
        rank_accept=jnp.zeros((batch, depth, width), jnp.float32),
        rank_count=jnp.zeros((batch, depth, width), jnp.int32),
    )


def _expected_tokens(law: Array, depth: Array) -> Array:
    return jnp.sum(jnp.sum(law, axis=-1) * (depth + 1).astype(law.dtype))


def round_probes(
    spec: tree_lib.TreeSpec,
    verifier: verify.NodeVerifier,
    tree: tree_lib.Tree,
    target_probs: Array,
    draft_probs: Array,
    result: walk.WalkResult,
) -> RoundProbes:
    """Diagnostics of one row's round (vmap over the batch).

    Args:
      spec: the static tree shape.
      verifier: the method's node verifier (used by the walk's law and for ranks).
      tree: the drafted tree.
      target_probs: ``[N+1, V]`` target laws.
      draft_probs: ``[N+1, V]`` draft laws.
      result: the round's verification outcome (its accepted path is probed).
    """
    dtype = jnp.float32
    walk_eta = _expected_tokens(
        walk.output_law(spec, tree, target_probs, draft_probs, verifier), tree.depth
    )
    without_replacement = spec.sibling_law == "without_replacement"
    if not without_replacement:  # traversal needs without-replacement siblings
        tv_eta = jnp.asarray(jnp.nan, dtype)
    else:
        tv_eta = traversal.expected_tokens(spec, tree, target_probs, draft_probs)
    depth, width = max(spec.depth, 1), max(spec.max_children, 1)
    rank_accept = jnp.zeros((depth, width), dtype)
    rank_count = jnp.zeros((depth, width), jnp.int32)
    if without_replacement and spec.depth > 0:
        b = jnp.arange(1, width + 1)
        for d in range(spec.depth):
            node = 0 if d == 0 else jnp.maximum(result.path[d - 1], 0)
            visited = d <= result.num_accepted
            kids = tree.valid & (tree.parents == node) & (jnp.arange(tree.tokens.shape[0]) > 0)
            (slots,) = jnp.nonzero(kids, size=width, fill_value=0)
            ok = jnp.arange(width) < jnp.sum(kids)
            plan = verifier.plan(target_probs[node], draft_probs[node], tree.tokens[slots], ok)
            a_b = 1.0 - jnp.cumprod(1.0 - plan.accept_prob)
            if spec.runtime_parents:  # SBS decides child counts: only real ones are data
                have = visited & (b <= jnp.sum(kids))
            else:  # fewer valid children = exhausted support: any wider tree has the same
                have = visited & (b > 0)
            rank_accept = rank_accept.at[d].set(jnp.where(have, a_b, 0.0).astype(dtype))
            rank_count = rank_count.at[d].set(have.astype(jnp.int32))
    return RoundProbes(
        expected_tokens=jnp.stack([walk_eta, tv_eta]).astype(dtype),
        rank_accept=rank_accept,
        rank_count=rank_count,
    )
