"""Model-agnostic KV-cache operations the decoding engine needs.

Cache protocol (what ``rsd_jax`` assumes of a model's cache): a NamedTuple with
an ``index`` field (``[B]`` int32, the next write slot of each row; the forward
writes its ``T`` inputs at ``index .. index + T - 1`` and returns ``index + T``)
and any number of other array fields laid out ``[layers, B, S, ...]`` (batch on
axis 1, slot on axis 2). ``models.decoder.KVCache`` and the toy models follow it.

Committing the accepted path is a gather + write: the entries of the accepted
nodes move to contiguous slots right after the prefix. Stale slots need no
cleanup because attention masks ignore everything past a row's length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def set_index(cache, index: Array):
    """Returns ``cache`` whose rows will next be written at ``index`` (``[B]``)."""
    return cache._replace(index=jnp.asarray(index, jnp.int32))


def capacity(cache) -> int:
    """Slots per row ``S`` (static)."""
    fields = [v for k, v in cache._asdict().items() if k != "index"]
    return int(fields[0].shape[2])


def commit_path(cache, src: Array, dst_start: Array, count: Array):
    """Moves ``count[b]`` entries of row ``b`` from slots ``src[b, :]`` to ``dst_start[b] + i``.

    Args:
      cache: a cache following the protocol above.
      src: ``[B, A]`` source slots (entries past ``count`` are ignored).
      dst_start: ``[B]`` first destination slot.
      count: ``[B]`` number of entries to move.

    Returns:
      The cache with the entries moved (all sources are read before any write,
      so overlapping ranges are safe). ``index`` is unchanged.
    """
    num = src.shape[1]

    def row(x, s, start, n):  # x: [layers, S, ...]
        size = x.shape[1]
        keep = jnp.arange(num) < n
        values = x[:, jnp.clip(s, 0, size - 1)]
        dst = jnp.where(keep, start + jnp.arange(num), size)  # out of range -> dropped
        return x.at[:, dst].set(values, mode="drop")

    moved = {
        name: value
        if name == "index"
        else jax.vmap(row, in_axes=(1, 0, 0, 0), out_axes=1)(value, src, dst_start, count)
        for name, value in cache._asdict().items()
    }
    return type(cache)(**moved)


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
