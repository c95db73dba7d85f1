"""Decoding engine: one pure speculative step over a batch, and two drivers.

A round, for every row ``b`` of the batch (docs/algorithms.md, Draft trees and Tree verification):

1. **Draft** (skipped for AR): one call feeding ``[t_{n-1}, root]`` at slots
   ``n-1, n`` (re-computing the last committed token keeps the draft cache
   complete even when the previous round accepted a leaf the draft never
   saw), then one call per tree level ``1..L-1`` over that level's nodes with
   tree attention on the draft's own cache; nodes are drawn level by level by
   the method's strategy (:mod:`rsd_jax.drafting`).
2. **Verify**: one target call over root + all ``N`` nodes (ancestor mask,
   depth positions) written at slots ``n .. n+N``; the method's tree
   verifier (:mod:`rsd_jax.tree_verifiers`: the node walk of
   :mod:`rsd_jax.walk`, or traversal verification) decides what is accepted.
3. **Commit**: the accepted nodes' KV entries move to slots ``n+1 ..`` in both
   caches; the emitted tokens are appended; the last one is the next root
   (it has no KV yet).

Here ``n = length[b]`` is the number of committed tokens that have target KV;
the root sits at ``tokens[b, n]``. Shapes are static: set by the method, the
batch, the prompt bucket and ``max_new_tokens``. Finished rows stay in the
batch and change nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rsd_jax import drafting, kv_cache, methods, transforms
from rsd_jax import probes as probe_lib
from rsd_jax import tree as tree_lib

Array = jax.Array
ApplyFn = Callable[..., tuple[Array, Any]]  # (params, tokens, positions, mask, cache)


class Counters(NamedTuple):
    """Per-row counters, all ``[B]`` except ``accepted_hist`` ``[B, L+1]``.

    Attributes:
      target_calls: verification calls (rounds) made.
      draft_calls: sequential draft calls made.
      generated: tokens emitted (may exceed ``max_new_tokens`` by up to ``L``).
      accepted_hist: rounds by number of accepted draft tokens ``0..L``.
      nodes_scored: draft nodes the target scored (budget ``B`` per round).
      nonfinite_target: rounds whose target logits were not a law: a NaN, a ``+inf``, or a
        position with no finite logit (``-inf`` is probability 0 and fine: it is how a
        model masks ids). Such a round emits nothing and stops its row (the drivers then
        raise, naming it).
      nonfinite_draft: rounds whose draft logits were not a law in the same sense (still
        exact: any draft law is, but acceptance suffers; reports warn).
      zero_prob_draft: rounds in which a drafted node's recorded draft probability was 0.
        The verifiers reject such nodes (fail closed: a token the draft law never
        proposes cannot be checked against it). A correct engine never drafts one, so a
        non-zero count means the law a token was drawn from and the law recorded for it
        disagree; reports warn.
      probes: :class:`rsd_jax.probes.RoundProbes` summed over rounds (zeros
        unless the engine was built with ``probes=True``).
    """

    target_calls: Array
    draft_calls: Array
    generated: Array
    accepted_hist: Array
    nodes_scored: Array
    nonfinite_target: Array
    nonfinite_draft: Array
    zero_prob_draft: Array
    probes: probe_lib.RoundProbes


class DecodeState(NamedTuple):
    """Everything that changes during generation (a pytree; donated to the step).

    Attributes:
      tokens: ``[B, C]`` prompt, then generated ids; the root is at ``length``.
      length: ``[B]`` committed tokens with target KV (root index).
      prompt_len: ``[B]`` prompt lengths.
      max_new: ``[B]`` generation budget per row.
      done: ``[B]`` finished rows (EOS or budget reached).
      key: ``[B, 2]`` per-row PRNG keys; round ``r`` uses ``fold_in(key, r)``.
      round: ``[B]`` rounds run per row.
      target_cache: target KV cache (rsd_jax cache protocol).
      draft_cache: draft KV cache (None for AR).
      counters: :class:`Counters`.
      temperature, top_k, top_p: run-time sampling settings (scalars).
    """

    tokens: Array
    length: Array
    prompt_len: Array
    max_new: Array
    done: Array
    key: Array
    round: Array
    target_cache: Any
    draft_cache: Any
    counters: Counters
    temperature: Array
    top_k: Array
    top_p: Array


@dataclasses.dataclass(frozen=True)
class Engine:
    """Static configuration of the step (hashable: it is part of the jit cache key).

    Attributes:
      method: the decoding method (tree shape + verifier).
      target_apply: target forward ``(params, tokens, positions, mask, cache) -> (logits, cache)``.
      draft_apply: draft forward with the same signature (unused for AR).
      vocab_size: logits width ``V``.
      valid_vocab_size: ids ``>=`` this get probability 0 (vocabulary padding).
      eos_id: end-of-sequence id, -1 for none.
      sbs_truncate: keep True (False only for tests of SBS).
      probes: also compute the exact diagnostics of :mod:`rsd_jax.probes`
        every round (costs two outcome laws per row; off for timing runs).
      nucleus: optional replacement for :func:`rsd_jax.transforms.top_p_threshold` (same
        contract, so the same laws), e.g. the CPU kernel ``models.kernels.nucleus.threshold``;
        ``None`` uses the XLA bisection.
    """

    method: methods.Method
    target_apply: ApplyFn
    draft_apply: ApplyFn | None
    vocab_size: int
    valid_vocab_size: int | None = None
    eos_id: int = -1
    sbs_truncate: bool = True
    probes: bool = False
    nucleus: Callable | None = None

    def __post_init__(self):
        if self.method.spec.depth > 0 and self.draft_apply is None:
            raise ValueError(f"method {self.method.describe()} needs a draft model")

    def capacities(self, prompt_bucket: int, max_new_tokens: int) -> tuple[int, int]:
        """``(token buffer C, cache slots S)`` that can never overflow."""
        spec = self.method.spec
        buffer = prompt_bucket + max_new_tokens + spec.depth + 2
        cache = prompt_bucket + max_new_tokens + spec.num_nodes + 2
        return buffer, cache

    def probs(self, state: DecodeState, logits: Array) -> Array:
        """The sampling law (``[..., V]`` float32) of ``logits`` under the state's settings."""
        banned = None
        if self.valid_vocab_size is not None:
            banned = transforms.vocab_mask(self.vocab_size, self.valid_vocab_size)
        return transforms.probs_from_logits(
            logits.astype(jnp.float32),
            state.temperature,
            state.top_k,
            state.top_p,
            banned,
            self.nucleus,
        )

    def score(self, state, apply, params, cache, tokens, positions, mask, start):
        """Scores ``tokens`` ``[B, T]`` written from cache slot ``start`` ``[B]`` with ``mask``.

        The unit every model call of a round is made of. Returns ``(probs [B, T, V], cache,
        lawful [B])``, ``lawful`` saying whether a row's logits were laws (:func:`lawful_rows`).
        """
        logits, cache = apply(params, tokens, positions, mask, kv_cache.set_index(cache, start))
        return self.probs(state, logits), cache, lawful_rows(logits)

    def draft(self, state: DecodeState, draft_params, keys: Array):
        """Phase 1: every row's draft tree and the draft law at its internal nodes.

        Level 0 feeds ``[t_{n-1}, root]`` at slots ``n-1, n`` (so the draft cache is
        complete even after a round that accepted a leaf the draft never scored); level
        ``l >= 1`` scores that level's nodes with tree attention on the draft cache.

        Returns:
          ``(tree, draft_probs [B, N+1, V], draft_cache, lawful [B])``, ``lawful`` saying
          whether every draft call of a row gave laws (:func:`lawful_rows`).
        """
        spec = self.method.spec
        rows, n = jnp.arange(state.length.shape[0]), state.length
        root = state.tokens[rows, n]
        cap = kv_cache.capacity(state.draft_cache) if spec.depth > 0 else 0

        def level_fn(tree, level, carry):
            cache, finite = carry
            if level == 0:
                start = n - 1
                toks = jnp.stack([state.tokens[rows, start], root], axis=1)
                pos = start[:, None] + jnp.arange(2)[None, :]
                mask = kv_cache.causal_prefix_mask(start, 2, cap)
                logits, cache = self.draft_apply(
                    draft_params, toks, pos, mask, kv_cache.set_index(cache, start)
                )
                return self.probs(state, logits[:, 1:2]), (cache, lawful_rows(logits))
            sl = spec.level_slice(level)
            anc = jax.vmap(tree_lib.ancestor_mask, (0, None))(tree.parents, spec.depth)
            pos = jnp.broadcast_to((n + level)[:, None], (rows.shape[0], sl.stop - sl.start))
            mask = kv_cache.prefix_tree_mask(n, anc[:, sl], cap)
            probs, cache, ok = self.score(
                state, self.draft_apply, draft_params, cache, tree.tokens[:, sl], pos, mask,
                n + sl.start,
            )  # fmt: skip
            return probs, (cache, finite & ok)

        finite = jnp.ones(rows.shape, jnp.bool_)
        tree, draft_probs, (cache, finite) = drafting.draft_batch(
            keys, spec, root, level_fn, (state.draft_cache, finite), self.sbs_truncate
        )
        if draft_probs is None:  # AR: no draft levels
            draft_probs = jnp.zeros((rows.shape[0], spec.num_nodes + 1, self.vocab_size))
        return tree, draft_probs, cache, finite

    def score_tree(self, state: DecodeState, tree, target_params):
        """Phase 2: one target call over root + all nodes (ancestor mask, depth positions),
        written at slots ``n .. n+N``. Returns ``(target_probs [B, N+1, V], target_cache,
        lawful [B])``."""
        n = state.length
        cap = kv_cache.capacity(state.target_cache)
        anc = jax.vmap(tree_lib.ancestor_mask, (0, None))(tree.parents, self.method.spec.depth)
        mask = kv_cache.prefix_tree_mask(n, anc, cap)
        positions = tree_lib.node_positions(tree.depth, n)
        return self.score(
            state, self.target_apply, target_params, state.target_cache, tree.tokens, positions,
            mask, n,
        )  # fmt: skip

    def verify(self, keys: Array, tree, target_probs: Array, draft_probs: Array):
        """Phase 3: the method's tree verifier on every row (a batched ``WalkResult``)."""
        spec, rule = self.method.spec, self.method.tree_verifier
        return jax.vmap(lambda k, t, q, p: rule.verify(k, spec, t, q, p, self.eos_id))(
            keys, tree, target_probs, draft_probs
        )

    def commit(
        self, state: DecodeState, res, target_cache, draft_cache, target_ok=None, draft_ok=None,
        zero_draft=None,
    ) -> DecodeState:  # fmt: skip
        """Phase 4: moves the accepted nodes' KV to slots ``n+1 ..`` in both caches, appends
        the emitted tokens, and counts the round (finished rows change nothing).

        A row whose target logits were not laws (``target_ok`` False: a NaN, a ``+inf`` or
        a position without a finite logit) emits nothing, is stopped and counted in
        ``nonfinite_target``: its law is undefined, so no token may come out of it.
        ``draft_ok`` False and ``zero_draft`` True (a drafted node of recorded probability
        0, see `zero_prob_nodes`) are only counted.
        """
        spec = self.method.spec
        rows, n = jnp.arange(state.length.shape[0]), state.length
        active = ~state.done
        ok = active if target_ok is None else active & target_ok
        broken = active & ~ok
        accepted = jnp.where(ok, res.num_accepted, 0)
        emitted = jnp.where(ok, res.num_emitted, 0)
        src = n[:, None] + jnp.maximum(res.path, 0)
        target_cache = kv_cache.commit_path(target_cache, src, n + 1, accepted)
        if spec.depth > 0:
            draft_cache = kv_cache.commit_path(draft_cache, src, n + 1, accepted)
        width = res.tokens.shape[1]
        slots = n[:, None] + 1 + jnp.arange(width)[None, :]
        slots = jnp.where(
            jnp.arange(width)[None, :] < emitted[:, None], slots, state.tokens.shape[1]
        )
        tokens = state.tokens.at[rows[:, None], slots].set(res.tokens, mode="drop")
        c = state.counters
        one = active.astype(jnp.int32)
        generated = c.generated + emitted
        counters = c._replace(
            target_calls=c.target_calls + one,
            draft_calls=c.draft_calls + one * spec.depth,
            generated=generated,
            accepted_hist=c.accepted_hist.at[rows, accepted].add(one),
            nodes_scored=c.nodes_scored + one * spec.num_nodes,
            nonfinite_target=c.nonfinite_target + broken.astype(jnp.int32),
            nonfinite_draft=c.nonfinite_draft
            + (0 if draft_ok is None else (active & ~draft_ok).astype(jnp.int32)),
            zero_prob_draft=c.zero_prob_draft
            + (0 if zero_draft is None else (active & zero_draft).astype(jnp.int32)),
        )
        finished = ok & (res.hit_eos | (generated >= state.max_new))
        done = state.done | finished | broken
        return state._replace(
            tokens=tokens,
            length=n + emitted,
            done=done,
            round=state.round + one,
            target_cache=target_cache,
            draft_cache=draft_cache,
            counters=counters,
        )

    def add_probes(self, state, tree, target_probs, draft_probs, res) -> DecodeState:
        """Adds this round's exact diagnostics (:mod:`rsd_jax.probes`) to the counters."""
        spec, verifier = self.method.spec, self.method.verifier
        found = jax.vmap(lambda t, q, p, r: probe_lib.round_probes(spec, verifier, t, q, p, r))(
            tree, target_probs, draft_probs, res
        )
        active = ~state.done

        def add(acc, x):
            return acc + jnp.where(active.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0)

        c = state.counters
        return state._replace(counters=c._replace(probes=jax.tree.map(add, c.probes, found)))

    def step(self, state: DecodeState, target_params, draft_params) -> DecodeState:
        """One speculative round for every row: draft -> score -> verify -> commit.

        Pure; jit it with the state donated.
        """
        round_keys = jax.vmap(jax.random.fold_in)(state.key, state.round)
        k_draft, k_verify = jnp.moveaxis(jax.vmap(jax.random.split)(round_keys), 1, 0)
        tree, draft_probs, draft_cache, draft_ok = self.draft(state, draft_params, k_draft)
        target_probs, target_cache, target_ok = self.score_tree(state, tree, target_params)
        res = self.verify(k_verify, tree, target_probs, draft_probs)
        if self.probes and self.method.spec.depth > 0:
            state = self.add_probes(state, tree, target_probs, draft_probs, res)
        zero = zero_prob_nodes(tree, draft_probs) if self.method.spec.depth > 0 else None
        return self.commit(state, res, target_cache, draft_cache, target_ok, draft_ok, zero)


def zero_prob_nodes(tree, draft_probs: Array) -> Array:
    """``[B]``: whether a valid drafted node's token has recorded probability 0 under its
    parent's draft law (``draft_probs [B, N+1, V]`` by slot; the tree's arrays ``[B, N+1]``)."""
    parents = jnp.maximum(tree.parents, 0)
    laws = jnp.take_along_axis(draft_probs, parents[:, :, None], axis=1)  # [B, N+1, V]
    p = jnp.take_along_axis(laws, tree.tokens[:, :, None], axis=2)[..., 0]  # [B, N+1]
    child = tree.valid & (tree.parents >= 0)
    return jnp.any(child & (p <= 0), axis=1)


def lawful_rows(logits: Array) -> Array:
    """``[B]``: whether every position of a row (``logits [B, T, V]``) defines a law.

    ``-inf`` is probability 0 (how a model masks ids, e.g. ``jnp.where(mask, logits,
    -jnp.inf)``), so it is allowed; a NaN, a ``+inf`` or a position whose logits are all
    ``-inf`` leave the softmax undefined.
    """
    broken = jnp.isnan(logits) | (logits == jnp.inf)
    some_mass = jnp.any(jnp.isfinite(logits), axis=2)  # [B, T]
    return ~jnp.any(broken, axis=(1, 2)) & jnp.all(some_mass, axis=1)
