"""One-pass tree verification: walk the drafted tree from the root (docs/algorithms.md).

At each step the walk holds the accepted node and the set of *alive* nodes
(nodes with the same token path: one node in a without-replacement tree, all
duplicates in an i.i.d. tree). The candidate children are the valid children
of alive nodes, in slot order (= draw order). The node verifier decides; on
acceptance the walk descends, on total rejection it emits the residual token
and stops. After the deepest level there are no candidates, so the "residual"
is ``q`` itself: the bonus token. Tokens per round = accepted depth + 1, except
that an accepted end-of-sequence token ends the round at once.

Each step draws fresh uniforms from ``fold_in(key, step)``, independent of the
drafting randomness.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rsd_jax import tree as tree_lib
from rsd_jax import verify

Array = jax.Array


class WalkResult(NamedTuple):
    """Outcome of verifying one tree.

    Attributes:
      path: ``[L]`` slots of the accepted nodes from the root down, -1 padded.
      num_accepted: number of accepted draft tokens.
      tokens: ``[L+1]`` emitted ids (accepted tokens, then the residual or
        bonus token), -1 padded.
      num_emitted: number of valid entries in ``tokens``.
      hit_eos: whether an emitted token is the end-of-sequence id.
    """

    path: Array
    num_accepted: Array
    tokens: Array
    num_emitted: Array
    hit_eos: Array


def candidates(tree: tree_lib.Tree, alive: Array, step: Array, max_children: int):
    """Children the walk considers after ``step`` accepted tokens.

    Args:
      tree: the drafted tree.
      alive: ``[N+1]`` slots sharing the accepted token path.
      step: number of tokens accepted so far (the candidates have depth step + 1).
      max_children: static slot count.

    Returns:
      ``(mask [N+1], slots [K], slot_valid [K])``: candidate mask, candidate slots
      in slot (= draw) order, and which of the ``K`` entries are real.
    """
    cand = _candidate_mask(tree, alive, step)
    (slots,) = jnp.nonzero(cand, size=max_children, fill_value=0)
    slot_valid = jnp.arange(max_children) < jnp.sum(cand)
    return cand, slots, slot_valid


def verify_tree(
    key: Array,
    spec: tree_lib.TreeSpec,
    tree: tree_lib.Tree,
    target_probs: Array,
    draft_probs: Array,
    verifier: verify.NodeVerifier,
    eos_id=-1,
) -> WalkResult:
    """Verifies a drafted tree with one node verifier applied along the walk.

    Args:
      key: PRNG key for verification only.
      spec: the static tree shape (gives ``L`` and the candidate bound).
      tree: the drafted tree (``[N+1]`` arrays, slot 0 root).
      target_probs: ``[N+1, V]`` target law ``q`` at every slot.
      draft_probs: ``[N+1, V]`` draft law ``p`` at every internal slot.
      verifier: the node rule (e.g. ``verify.get_verifier("rrs")``).
      eos_id: end-of-sequence id (scalar, -1 for none); an accepted EOS ends
        the round without a bonus token.

    Returns:
      A :class:`WalkResult`.
    """
    num_slots = tree.tokens.shape[0]
    max_depth, max_children = spec.depth, spec.max_children
    eos_id = jnp.asarray(eos_id, jnp.int32)

    def step(carry, d):
        cur, alive, done, path, n_acc, out, n_out, eos = carry
        cand, slots, slot_valid = candidates(tree, alive, d, max_children)
        child_tokens = tree.tokens[slots]
        plan = verifier.plan(target_probs[cur], draft_probs[cur], child_tokens, slot_valid)
        decision = verify.sample_plan(jax.random.fold_in(key, d), plan, child_tokens)
        accepted = (decision.accepted >= 0) & ~done
        rejected = (decision.accepted < 0) & ~done
        new_cur = jnp.where(accepted, slots[jnp.maximum(decision.accepted, 0)], cur)
        new_alive = jnp.where(accepted, cand & (tree.tokens == decision.token), alive)
        emit = ~done
        out = jnp.where(emit, out.at[n_out].set(decision.token), out)
        if max_depth > 0:  # AR trees have no path to record
            path = jnp.where(accepted, path.at[n_acc].set(new_cur), path)
        is_eos = emit & (decision.token == eos_id)
        new_done = done | rejected | is_eos
        return (
            new_cur,
            new_alive,
            new_done,
            path,
            n_acc + accepted.astype(jnp.int32),
            out,
            n_out + emit.astype(jnp.int32),
            eos | is_eos,
        ), None

    init = (
        jnp.zeros((), jnp.int32),
        jnp.zeros((num_slots,), jnp.bool_).at[0].set(True),
        jnp.zeros((), jnp.bool_),
        jnp.full((max_depth,), -1, jnp.int32),
        jnp.zeros((), jnp.int32),
        jnp.full((max_depth + 1,), -1, jnp.int32),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.bool_),
    )

    # Steps after the walk stops change nothing, so the loop ends there: each step costs a
    # node plan and a residual draw over the vocabulary (on a CPU ~1.5 ms at V = 152k).
    def more(state):
        d, carry = state
        return (d <= max_depth) & ~carry[2]

    def next_step(state):
        d, carry = state
        return d + 1, step(carry, d)[0]

    _, carry = jax.lax.while_loop(more, next_step, (jnp.zeros((), jnp.int32), init))
    _, _, _, path, n_acc, out, n_out, eos = carry
    return WalkResult(path=path, num_accepted=n_acc, tokens=out, num_emitted=n_out, hit_eos=eos)


def output_law(
    spec: tree_lib.TreeSpec,
    tree: tree_lib.Tree,
    target_probs: Array,
    draft_probs: Array,
    verifier: verify.NodeVerifier,
) -> Array:
    """Exact law of the walk's outcome for a fixed tree (no sampling).

    ``law[v, y]`` is the probability that the walk's last accepted node is slot
    ``v`` (0 = nothing accepted) and the emitted residual/bonus token is ``y``.
    The accepted tokens are then the token path to ``v``. Uses the same
    candidate logic and verifier plans as :func:`verify_tree`; tests enumerate
    every drafted tree with this to prove losslessness exactly, and shape
    search can use it for expected block efficiency. End-of-sequence stopping
    is not modelled.

    Returns:
      ``[N+1, V]`` probabilities summing to one.
    """
    num_slots, v = target_probs.shape
    max_children = spec.max_children
    depth = tree.depth

    def node_plan(slot, alive):
        _, slots, slot_valid = candidates(tree, alive, depth[slot], max_children)
        plan = verifier.plan(target_probs[slot], draft_probs[slot], tree.tokens[slots], slot_valid)
        reject_before = jnp.cumprod(
            jnp.concatenate([jnp.ones((1,), plan.accept_prob.dtype), 1.0 - plan.accept_prob])
        )
        accept_mass = reject_before[:-1] * plan.accept_prob  # [K]
        child_alive = jax.vmap(
            lambda s: _candidate_mask(tree, alive, depth[slot]) & (tree.tokens == tree.tokens[s])
        )(slots)
        return slots, slot_valid, accept_mass, reject_before[-1] * plan.residual, child_alive

    reach = jnp.zeros((num_slots,), target_probs.dtype).at[0].set(1.0)
    alive = jnp.zeros((num_slots, num_slots), jnp.bool_).at[0, 0].set(True)
    law = jnp.zeros((num_slots, v), target_probs.dtype)
    for level in range(spec.depth + 1):
        level_slots = jnp.arange(num_slots)[spec.level_slice(level)]
        slots, ok, acc, stop, child_alive = jax.vmap(node_plan)(level_slots, alive[level_slots])
        r = reach[level_slots]
        law = law.at[level_slots].set(r[:, None] * stop)
        mass = jnp.where(ok, r[:, None] * acc, 0.0)
        reach = reach.at[slots.reshape(-1)].add(mass.reshape(-1))
        # A slot reached from several representatives always gets the same alive set.
        new_alive = (child_alive.reshape(-1, num_slots) & ok.reshape(-1)[:, None]).astype(jnp.int32)
        alive = alive | (jnp.zeros(alive.shape, jnp.int32).at[slots.reshape(-1)].max(new_alive) > 0)
    return law


def _candidate_mask(tree, alive, step):
    parent_ok = alive[jnp.maximum(tree.parents, 0)] & (tree.parents >= 0)
    return tree.valid & (tree.depth == step + 1) & parent_ok
