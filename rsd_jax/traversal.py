"""Sequence-level tree verification: traversal verification, and block verification on chains.

docs/algorithms.md. Instead of judging one node at a time from the root
down (:mod:`rsd_jax.walk`), whole root-to-node paths are judged leaf first with
sequence-level weights. Each node ``v`` with parent ``u`` carries

* a weight ``alpha(v) = min(1, alpha(u) r_u(x_v) / d_u(x_v))`` (``alpha(root) = 1``),
  fixed when the traversal first descends into ``v``;
* a target residual ``r_v`` (initially ``q(.|v)``) and a draft law ``d_v``
  (initially ``p(.|v)``), both updated each time a child of ``v`` is rejected.

The traversal is a depth-first walk, children in draw order. A node whose
children have all been removed is *tested*: accepted with probability
``alpha(v)`` (the root always), which ends the round with the tokens on the
path to ``v`` followed by one token drawn from ``r_v``. A rejected node ``c``
is removed and its parent ``u`` updated::

    m = (alpha(u) r_u - d_u)^+,   S = sum(m)
    alpha(u) <- S / (S + 1 - alpha(u)),   r_u <- m / S
    d_u <- d_u without x_c, renormalised   (the next sibling's without-replacement law)

Derivation (the exact-enumeration tests decide): by induction over subtrees,
the subtree of ``v`` is accepted somewhere with total probability
``alpha(v)`` and then emits its next token with law ``r_v``. A child drawn
from ``d_u`` is accepted with ``min(d_u, alpha(u) r_u)``, leaving exactly the
measure ``m`` to be produced after a rejection (probability ``1 - alpha(u) +
S``), which the update renormalises. With one child per node this is block
verification (Sun et al. 2025); with one level it is recursive rejection
sampling (RRS) exactly; at the root ``alpha = 1`` throughout.

Because every test before the accepted one is a rejection, the state each
test sees is deterministic: one forced-rejection pass (static ``2N + 1``
steps) yields every node's test probability ``alpha(v)``, test-time residual
``r_v`` and test order (post-order). Sampling draws one uniform per node up
front and keeps the residual of the first node (in test order) whose uniform
is below its ``alpha``; the exact law needs no enumeration of branches. Only
the nodes on the current depth-first path change, so the pass keeps residuals
and draft laws per depth (``[L+1, V]``), which keeps it cheap at real
vocabulary sizes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rsd_jax import transforms, verify, walk
from rsd_jax import tree as tree_lib

Array = jax.Array


class TraversalPlan(NamedTuple):
    """Every node's test, as met by the traversal when all earlier tests reject.

    Attributes:
      alpha: ``[N+1]`` acceptance probability of each node's test (root: 1;
        invalid slots: 0).
      order: ``[N+1]`` post-order position of each node's test (invalid slots:
        ``N + 1``, after every real test).
      residual: ``[N+1, V]`` law of the token emitted when the node is accepted
        (only with ``keep_residuals``, else None).
      accepted: with ``uniforms``, the accepted node: the first in test order
        whose uniform falls below its ``alpha`` (else None).
      emit_law: with ``uniforms``, the accepted node's residual ``[V]`` (else None).
    """

    alpha: Array
    order: Array
    residual: Array | None = None
    accepted: Array | None = None
    emit_law: Array | None = None


def _child_weight(alpha_parent: Array, r_x: Array, d_x: Array) -> Array:
    """``min(1, alpha(u) r_u(x) / d_u(x))``: the ratio is *not* capped before the product."""
    safe = jnp.where(d_x > 0, d_x, 1.0)  # d_x > 0 for a drawn id; fail closed otherwise
    return jnp.where(d_x > 0, jnp.minimum(1.0, alpha_parent * r_x / safe), 0.0)


def _remove(law: Array, token: Array) -> Array:
    """``law`` with ``token`` removed and renormalised (unchanged if nothing is left)."""
    return verify.normalize(law.at[token].set(0.0), law)


def traversal_plan(
    tree: tree_lib.Tree,
    target_probs: Array,
    draft_probs: Array,
    max_depth: int,
    uniforms: Array | None = None,
    keep_residuals: bool = True,
) -> TraversalPlan:
    """Runs the forced-rejection traversal and records every node's test.

    Only the nodes on the current depth-first path change state, so residuals and
    draft laws are kept per depth (``[L+1, V]``), not per node.

    Args:
      tree: the drafted tree (siblings in draw order, a without-replacement
        sample from their parent's draft law, or one child per node).
      target_probs: ``[N+1, V]`` target law ``q`` at every slot.
      draft_probs: ``[N+1, V]`` draft law ``p`` at every internal slot.
      max_depth: static bound on node depths (``spec.depth``).
      uniforms: optional ``[N+1]`` uniforms, one per node's test: the plan then
        also holds the accepted node and its emission law.
      keep_residuals: also return every node's test-time residual (``[N+1, V]``;
        the exact law needs it, sampling does not).
    """
    num_slots, vocab = target_probs.shape
    dtype = target_probs.dtype
    slots = jnp.arange(num_slots)
    rows = max_depth + 1

    def body(_, state):
        cur, alive, visited, alpha, res_rows, dlaw_rows, order, t, out, accepted, emit = state
        d = tree.depth[cur]
        kids = tree.valid & alive & ~visited & (tree.parents == cur) & (slots > 0)
        has_child = jnp.any(kids)
        child = jnp.argmax(kids).astype(jnp.int32)  # first in slot (= draw) order
        finished = t >= num_slots
        descend = has_child & ~finished
        test = ~has_child & ~finished

        # Descend: fix the child's weight from the parent's current state.
        x = tree.tokens[child]
        a_child = _child_weight(alpha[cur], res_rows[d, x], dlaw_rows[d, x])
        alpha = jnp.where(descend, alpha.at[child].set(a_child), alpha)
        visited = visited | (descend & (slots == child))
        below = jnp.minimum(d + 1, rows - 1)
        res_rows = res_rows.at[below].set(jnp.where(descend, target_probs[child], res_rows[below]))
        dlaw_rows = dlaw_rows.at[below].set(
            jnp.where(descend, draft_probs[child], dlaw_rows[below])
        )

        # Test: record it (and, when sampling, whether it is the accepted one).
        mine = res_rows[d]
        order = jnp.where(test, order.at[cur].set(t), order)
        if out is not None:
            out = out.at[cur].set(jnp.where(test, mine, out[cur]))
        if accepted is not None:
            hit = test & (accepted < 0) & ((uniforms[cur] < alpha[cur]) | (cur == 0))
            accepted = jnp.where(hit, cur, accepted)
            emit = jnp.where(hit, mine, emit)

        # Forced rejection: remove the node and update its parent (one depth up).
        parent = jnp.maximum(tree.parents[cur], 0).astype(jnp.int32)
        up = jnp.maximum(d - 1, 0)
        is_child = test & (cur > 0)
        r_u, d_u = res_rows[up], dlaw_rows[up]
        m = jnp.maximum(alpha[parent] * r_u - d_u, 0.0)
        s = jnp.sum(m)
        denom = s + 1.0 - alpha[parent]
        # denom == 0 only when this rejection has probability 0: keep the state.
        a_parent = jnp.where(denom > 0, s / jnp.where(denom > 0, denom, 1.0), alpha[parent])
        alpha = jnp.where(is_child, alpha.at[parent].set(a_parent), alpha)
        res_rows = res_rows.at[up].set(jnp.where(is_child, verify.normalize(m, r_u), r_u))
        dlaw_rows = dlaw_rows.at[up].set(jnp.where(is_child, _remove(d_u, tree.tokens[cur]), d_u))
        alive = jnp.where(test, alive.at[cur].set(False), alive)

        cur = jnp.where(descend, child, jnp.where(is_child, parent, cur)).astype(jnp.int32)
        t = t + test.astype(jnp.int32)
        return cur, alive, visited, alpha, res_rows, dlaw_rows, order, t, out, accepted, emit

    sampling = uniforms is not None
    init = (
        jnp.zeros((), jnp.int32),
        tree.valid,
        jnp.zeros((num_slots,), jnp.bool_).at[0].set(True),
        jnp.zeros((num_slots,), dtype).at[0].set(1.0),
        jnp.zeros((rows, vocab), dtype).at[0].set(target_probs[0]),
        jnp.zeros((rows, vocab), dtype).at[0].set(draft_probs[0]),
        jnp.full((num_slots,), num_slots, jnp.int32),
        jnp.where(tree.valid[0], 0, num_slots).astype(jnp.int32),
        jnp.zeros_like(target_probs) if keep_residuals else None,
        jnp.full((), -1, jnp.int32) if sampling else None,
        jnp.zeros((vocab,), dtype) if sampling else None,
    )
    # Each valid node is descended into once (root excluded) and tested once.
    final = jax.lax.fori_loop(0, 2 * num_slots - 1, body, init)
    alpha, order, out, accepted, emit = (final[i] for i in (3, 6, 8, 9, 10))
    alpha = jnp.where(tree.valid, alpha, 0.0).at[0].set(1.0)
    return TraversalPlan(alpha=alpha, order=order, residual=out, accepted=accepted, emit_law=emit)


def expected_tokens(spec: tree_lib.TreeSpec, tree: tree_lib.Tree, target_probs, draft_probs):
    """Exact expected tokens emitted (accepted depth + 1) for a fixed tree; no residuals kept."""
    plan = traversal_plan(tree, target_probs, draft_probs, spec.depth, keep_residuals=False)
    return jnp.sum(_accept_probs(plan) * (tree.depth + 1).astype(plan.alpha.dtype))


def _accept_probs(plan: TraversalPlan) -> Array:
    """``[N+1]`` probability that each node is the accepted one."""
    earlier = plan.order[None, :] < plan.order[:, None]  # [v, w]: w is tested before v
    # P(every earlier test rejects): a product of (1 - alpha) (alpha == 1 gives exact zeros).
    reach = jnp.prod(jnp.where(earlier, 1.0 - plan.alpha[None, :], 1.0), axis=1)
    return reach * plan.alpha


def output_law(
    spec: tree_lib.TreeSpec, tree: tree_lib.Tree, target_probs: Array, draft_probs: Array
) -> Array:
    """Exact law of the outcome for a fixed tree, in :func:`rsd_jax.walk.output_law`'s format.

    ``law[v, y]`` is the probability that node ``v`` is accepted (0 = only the
    root) and ``y`` is emitted after it. End-of-sequence stopping is not modelled.
    """
    plan = traversal_plan(tree, target_probs, draft_probs, spec.depth)
    return _accept_probs(plan)[:, None] * plan.residual


def verify_tree(
    key: Array,
    spec: tree_lib.TreeSpec,
    tree: tree_lib.Tree,
    target_probs: Array,
    draft_probs: Array,
    eos_id=-1,
) -> walk.WalkResult:
    """Traversal verification of one drafted tree; same contract as :func:`walk.verify_tree`.

    Uses one fresh uniform per node and one categorical draw, all from ``key``
    (independent of the drafting randomness). An end-of-sequence token on the
    accepted path ends the round there, without a further token.
    """
    max_depth = spec.depth
    eos_id = jnp.asarray(eos_id, jnp.int32)
    k_test, k_emit = jax.random.split(key)
    u = jax.random.uniform(k_test, tree.tokens.shape, dtype=target_probs.dtype)
    plan = traversal_plan(
        tree, target_probs, draft_probs, max_depth, uniforms=u, keep_residuals=False
    )
    accepted = plan.accepted
    last = transforms.categorical(k_emit, transforms.safe_log(plan.emit_law))

    # Path root -> accepted node, from the parent links (static depth bound).
    n_acc = tree.depth[accepted]
    path = jnp.full((max_depth,), -1, jnp.int32)
    node = accepted
    for _ in range(max_depth):
        path = jnp.where(node > 0, path.at[jnp.maximum(tree.depth[node] - 1, 0)].set(node), path)
        node = jnp.where(node > 0, tree.parents[node], 0)
    path_tokens = jnp.where(path >= 0, tree.tokens[jnp.maximum(path, 0)], -1)

    # An end-of-sequence token on the path ends the round right after it.
    idx = jnp.arange(max_depth)
    is_eos = (path_tokens == eos_id) & (idx < n_acc)
    eos_on_path = jnp.any(is_eos)
    n_acc = jnp.where(eos_on_path, jnp.argmax(is_eos) + 1, n_acc).astype(jnp.int32)
    path = jnp.where(idx < n_acc, path, -1)
    tokens = jnp.concatenate([jnp.where(idx < n_acc, path_tokens, -1), jnp.full((1,), -1)])
    tokens = jnp.where(eos_on_path, tokens, tokens.at[n_acc].set(last)).astype(jnp.int32)
    num_emitted = n_acc + (~eos_on_path).astype(jnp.int32)
    hit_eos = eos_on_path | (last == eos_id)
    return walk.WalkResult(
        path=path, num_accepted=n_acc, tokens=tokens, num_emitted=num_emitted, hit_eos=hit_eos
    )
