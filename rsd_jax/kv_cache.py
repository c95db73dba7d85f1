"""Model-agnostic KV-cache operations the decoding engine needs.

The caches follow the protocol of :mod:`rsd_jax.interface` (``index`` plus arrays laid
out ``[L, B, S, ...]``); ``models.arch.decoder.KVCache`` and the toy models' caches do.

Committing the accepted path is a gather + write: the entries of the accepted
nodes move to contiguous slots right after the prefix. Stale slots need no
cleanup because attention masks ignore everything past a row's length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsd_jax.interface import BATCH_AXIS, SLOT_AXIS, cache_arrays, map_cache

Array = jax.Array


def set_index(cache, index: Array):
    """Returns ``cache`` whose rows will next be written at ``index`` (``[B]``)."""
    return cache._replace(index=jnp.asarray(index, jnp.int32))


def capacity(cache) -> int:
    """Slots per row ``S`` (static)."""
    return int(cache_arrays(cache)[0].shape[SLOT_AXIS])


def commit_path(cache, src: Array, dst_start: Array, count: Array):
    """Moves ``count[b]`` entries of row ``b`` from slots ``src[b, :]`` to ``dst_start[b] + i``.

    Args:
      cache: a cache following the protocol (:mod:`rsd_jax.interface`).
      src: ``[B, A]`` source slots (entries past ``count`` are ignored).
      dst_start: ``[B]`` first destination slot.
      count: ``[B]`` number of entries to move.

    Returns:
      The cache with the entries moved (all sources are read before any write,
      so overlapping ranges are safe). ``index`` is unchanged.
    """
    num = src.shape[1]
    slot = SLOT_AXIS - (BATCH_AXIS < SLOT_AXIS)  # the slot axis of one row
    lead = (slice(None),) * slot

    def row(x, s, start, n):  # x: one row, [L, S, ...]
        size = x.shape[slot]
        keep = jnp.arange(num) < n
        values = x[(*lead, jnp.clip(s, 0, size - 1))]
        dst = jnp.where(keep, start + jnp.arange(num), size)  # out of range -> dropped
        return x.at[(*lead, dst)].set(values, mode="drop")

    rows = jax.vmap(row, in_axes=(BATCH_AXIS, 0, 0, 0), out_axes=BATCH_AXIS)
    return map_cache(lambda x: rows(x, src, dst_start, count), cache)


def prefix_tree_mask(length: Array, ancestors: Array, capacity_: int) -> Array:
    """Attention mask of a tree call: the committed prefix plus each node's ancestors.

    The tree's slot ``j`` lives at cache slot ``length[b] + j`` (slot 0 = root).

    Args:
      length: ``[B]`` committed length (slots ``< length`` are the prefix).
      ancestors: ``[B, T, N+1]`` ancestor-or-self mask of the ``T`` queried
        tree slots over all ``N+1`` tree slots.
      capacity_: static cache size ``S``.

    Returns:
      ``[B, T, S]`` boolean mask.
    """
    n_tree = ancestors.shape[-1]
    s = jnp.arange(capacity_)[None, :]
    rel = s - length[:, None]  # [B, S] tree slot of each cache slot
    in_tree = (rel >= 0) & (rel < n_tree)
    tree_part = jnp.take_along_axis(
        ancestors,
        jnp.broadcast_to(
            jnp.clip(rel, 0, n_tree - 1)[:, None, :], ancestors.shape[:2] + (capacity_,)
        ),
        axis=-1,
    )
    return (s < length[:, None])[:, None, :] | (in_tree[:, None, :] & tree_part)


def causal_prefix_mask(start: Array, num: int, capacity_: int) -> Array:
    """``[B, num, S]`` mask for ``num`` consecutive tokens written from slot ``start[b]``.

    Query ``t`` sees slots ``<= start[b] + t``.
    """
    s = jnp.arange(capacity_)[None, None, :]
    last = start[:, None, None] + jnp.arange(num)[None, :, None]
    return s <= last


def prefill(apply, params, tokens: Array, cache, lengths: Array | None = None):
    """Writes ``tokens`` ``[B, T]`` from each row's ``cache.index`` under a causal mask.

    The one prefill of the package: the engine's, ``models.arch.decoder.prefill`` and the
    experiments' whole-prompt scoring call it.

    Args:
      apply: the model's forward (:class:`rsd_jax.interface.Forward`).
      params: its parameters.
      tokens: ``[B, T]`` ids; token ``t`` of row ``b`` goes to slot and position
        ``index[b] + t``.
      cache: a cache following the protocol; rows start at their current ``index``.
      lengths: ``[B]`` true lengths of right-padded rows: the returned index is
        ``index + lengths`` (later writes overwrite the padding). None: ``index + T``.

    Returns:
      ``(logits [B, T, V], cache)``.
    """
    start = cache.index
    num = tokens.shape[1]
    positions = start[:, None] + jnp.arange(num)[None, :]
    mask = causal_prefix_mask(start, num, capacity(cache))
    logits, cache = apply(params, tokens, positions, mask, cache)
    if lengths is not None:
        cache = set_index(cache, start + lengths)
    return logits, cache
