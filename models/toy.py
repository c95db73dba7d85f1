"""Toy language models with known conditionals (n-gram tables), for exactness tests.

An order-``n`` table ``table[c_1, ..., c_{n-1}, :]`` is the next-token law given
the last ``n - 1`` tokens; id ``V`` (one past the vocabulary) pads contexts
shorter than ``n - 1``. Tables are plain arrays, so tests can enumerate every
sequence's exact probability and run the same code under ``jit``.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsd_jax import tree as tree_lib
from rsd_jax.interface import BATCH_AXIS, Model

Array = jax.Array


def random_table(
    rng: np.random.Generator,
    vocab: int,
    order: int,
    alpha: float = 1.0,
    zero_frac: float = 0.0,
) -> np.ndarray:
    """Random n-gram table ``[V+1]*(order-1) + [V]`` (float64, rows sum to 1).

    Args:
      rng: numpy generator.
      vocab: vocabulary size ``V``.
      order: ``n`` (1 = unigram, 2 = bigram, ...).
      alpha: Dirichlet concentration (small = peaked, near-degenerate rows).
      zero_frac: probability that an entry is forced to zero (disjoint-ish
        supports); at least one entry per row is kept.
    """
    shape = (vocab + 1,) * (order - 1) + (vocab,)
    table = rng.dirichlet(np.full(vocab, alpha), size=shape[:-1])
    if zero_frac > 0:
        zero = rng.random(table.shape) < zero_frac
        keep = rng.integers(vocab, size=shape[:-1])
        zero[..., :][np.arange(vocab) == keep[..., None]] = False
        table = np.where(zero, 0.0, table)
        table /= table.sum(-1, keepdims=True)
    return table.reshape(shape)


def random_pair(
    rng: np.random.Generator, vocab: int, order: int, alpha: float, agreement: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(target, draft)`` tables: a random target, and a draft mixing it with an independent
    random table, ``agreement * target + (1 - agreement) * other`` (``agreement=1``: the
    target itself). Both tables are drawn from ``rng`` in that order (see :func:`random_table`).
    """
    target = random_table(rng, vocab, order, alpha=alpha)
    other = random_table(rng, vocab, order, alpha=alpha)
    return target, agreement * target + (1 - agreement) * other


def context_of(prefix: tuple[int, ...], order: int, vocab: int) -> tuple[int, ...]:
    """Last ``order - 1`` ids of ``prefix``, left-padded with the pad id ``vocab``."""
    k = order - 1
    if k == 0:
        return ()
    padded = (vocab,) * k + tuple(prefix)
    return padded[-k:]


def sequence_prob(table: np.ndarray, prefix: tuple[int, ...], seq: tuple[int, ...]) -> float:
    """Exact probability of ``seq`` following ``prefix`` under the table."""
    order, vocab = table.ndim, table.shape[-1]
    prob, ctx = 1.0, tuple(prefix)
    for x in seq:
        prob *= float(table[context_of(ctx, order, vocab)][x])
        ctx = ctx + (x,)
    return prob


def joint_law(table: np.ndarray, prefix: tuple[int, ...], length: int) -> dict:
    """``{seq: prob}`` for every sequence of ``length`` ids after ``prefix``."""
    vocab = table.shape[-1]
    return {
        seq: sequence_prob(table, prefix, seq)
        for seq in itertools.product(range(vocab), repeat=length)
    }


def tree_probs(table: Array, prefix: Array, tree: tree_lib.Tree) -> Array:
    """Next-token law at every slot of a drafted tree (jit-friendly).

    Args:
      table: n-gram table (``order - 1`` context axes, then ``V``).
      prefix: ``[order - 1]`` last committed ids *before* the root token,
        already padded with ``V`` (only used when the path is shorter).
      tree: drafted tree; slot 0 is the root (its token is the last
        committed id).

    Returns:
      ``[N+1, V]`` rows ``table[context(slot)]``.
    """
    k = table.ndim - 1
    if k == 0:
        return jnp.broadcast_to(table, tree.tokens.shape + table.shape)
    n = tree.tokens.shape[0]
    p = prefix.shape[0]
    # Token at hop h above each slot (h = 0: the slot itself), walking up to the
    # root and then back through the committed prefix.
    hops, cur, outside = [], jnp.arange(n), jnp.zeros((n,), jnp.int32)
    for _ in range(k):
        in_tree = cur >= 0
        from_prefix = prefix[jnp.clip(p - 1 - outside, 0, p - 1)]
        hops.append(jnp.where(in_tree, tree.tokens[jnp.maximum(cur, 0)], from_prefix))
        outside = outside + (~in_tree).astype(jnp.int32)
        cur = jnp.where(in_tree, tree.parents[jnp.maximum(cur, 0)], -1)
    ctx = tuple(hops[::-1])  # oldest first
    return table[ctx]


class ToyCache(NamedTuple):
    """Cache of the toy cached LM, following the cache protocol of ``rsd_jax.interface``.

    Attributes:
      tokens: ``[1, B, S]`` int32, the token id stored at each slot (one layer).
      positions: ``[1, B, S]`` int32, the position of that token.
      index: ``[B]`` next write slot.
    """

    tokens: Array
    positions: Array
    index: Array


def init_toy_cache(batch: int, capacity: int) -> ToyCache:
    shape = (1, batch, capacity)
    return ToyCache(
        tokens=jnp.zeros(shape, jnp.int32),
        positions=jnp.zeros(shape, jnp.int32),
        index=jnp.zeros((batch,), jnp.int32),
    )


def cached_forward(table: Array, tokens: Array, positions: Array, mask: Array, cache: ToyCache):
    """An n-gram table behind the model forward signature of rsd_jax.

    ``(params, tokens[B,T], positions[B,T], mask[B,T,S], cache) -> (logits[B,T,V], cache)``.
    It writes its inputs into the cache at ``cache.index``, then predicts for
    each query from the ``n - 1`` *visible* cache entries with the largest
    positions (the query itself included), exactly like attention restricted
    by ``mask``. Any engine bug in masks, positions or cache commits changes
    the contexts and therefore the output law, which the tests detect.
    """
    order, vocab = table.ndim, table.shape[-1]
    b, t = tokens.shape

    def write(x, idx, vals):  # x [1, S]: one row
        return jax.lax.dynamic_update_slice(x, vals[None, :], (0, idx))

    rows = jax.vmap(write, in_axes=(BATCH_AXIS, 0, 0), out_axes=BATCH_AXIS)
    cache = ToyCache(
        tokens=rows(cache.tokens, cache.index, tokens.astype(jnp.int32)),
        positions=rows(cache.positions, cache.index, positions.astype(jnp.int32)),
        index=cache.index + t,
    )
    if order == 1:
        logits = jnp.broadcast_to(safe_log_table(table), (b, t, vocab))
        return logits, cache
    slot_tok, slot_pos = cache.tokens[0], cache.positions[0]  # [B, S]
    scores = jnp.where(mask, slot_pos[:, None, :], -1)  # [B, T, S]
    top_pos, top_idx = jax.lax.top_k(scores, order - 1)  # newest first
    ctx = jnp.take_along_axis(jnp.broadcast_to(slot_tok[:, None, :], scores.shape), top_idx, -1)
    ctx = jnp.where(top_pos >= 0, ctx, vocab)[..., ::-1]  # oldest first, padded
    probs = table[tuple(ctx[..., i] for i in range(order - 1))]
    return safe_log_table(probs), cache


def as_model(table: np.ndarray, max_positions: int = 0) -> Model:
    """An n-gram ``table`` as a model of the engine (:func:`cached_forward`, float32)."""
    params = jnp.asarray(table, jnp.float32)
    vocab = table.shape[-1]
    return Model(cached_forward, params, init_toy_cache, vocab, max_positions=max_positions)


def safe_log_table(probs: Array) -> Array:
    return jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
