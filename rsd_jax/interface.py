"""What rsd_jax asks of a model: read this first.

Letters used for shapes throughout the package:

- ``B`` batch (rows), ``T`` tokens fed to one model call, ``S`` cache slots per row
  (the capacity), ``V`` vocabulary (logits width), ``L`` the cache's leading axis
  (a model's layers; 1 for a cache without layers).

**The forward** (:class:`Forward`), one signature for every call (prefill, the draft's
levels, the target's tree)::

    apply(params, tokens [B,T], positions [B,T], mask [B,T,S], cache) -> (logits [B,T,V], cache)

It writes its ``T`` inputs of row ``b`` at cache slots ``cache.index[b] ..
cache.index[b] + T - 1`` and returns the cache with ``index + T``. ``positions`` are the
tokens' positions in the sequence (a tree's nodes sit at prefix length + depth, so they
differ from slots); ``mask[b, t, s]`` says whether query ``t`` of row ``b`` sees slot
``s``, the new entries included. Logits may be any float dtype.

**The cache protocol**: a cache is a NamedTuple with

- ``index``: ``[B]`` int32, the next write slot of each row (the engine sets it before
  every call with :func:`rsd_jax.kv_cache.set_index`);
- any other fields, each an array or a pytree of arrays of any dtype and rank >= 3, laid
  out :data:`CACHE_AXES` = ``[L, B, S, ...]``: batch on :data:`BATCH_AXIS`, slot on
  :data:`SLOT_AXIS`, anything (heads, head dim) after. Every such entry belongs to one
  slot, so committing a path moves it with its slot and repeating a row copies it.

That is all the engine reads or writes of a cache: :mod:`rsd_jax.kv_cache` (capacity,
commit, masks, prefill), :func:`rsd_jax.generation.repeat_rows` and
:mod:`rsd_jax.sharding` go through :func:`cache_arrays` and :func:`map_cache`. Stale
slots need no cleanup: the masks never show a slot past a row's committed length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax

Array = jax.Array

CACHE_AXES = ("L", "B", "S")  # the leading axes of every cache array but ``index``
BATCH_AXIS = CACHE_AXES.index("B")
SLOT_AXIS = CACHE_AXES.index("S")
INDEX = "index"  # the cache field holding each row's next write slot, [B] int32


class Forward(Protocol):
    """A model's forward (see the module docstring for the contract)."""

    def __call__(
        self, params: Any, tokens: Array, positions: Array, mask: Array, cache: Any
    ) -> tuple[Array, Any]: ...


class Model(NamedTuple):
    """A model as rsd_jax sees it.

    Attributes:
      apply: the :class:`Forward`.
      params: its parameters (a pytree; passed as a jit argument, never baked in).
      init_cache: ``(batch, capacity) -> cache``, an empty cache following the protocol.
      vocab_size: logits width ``V``.
      sharding: optional ``(params, mesh) -> rsd_jax.sharding.ModelSharding``, the
        model's partition rules for multi-device runs (None: replicated params).
      max_positions: the context length it was trained for (0: unknown); prompts whose
        length plus ``max_new_tokens`` exceed it draw a warning.
    """

    apply: Forward
    params: Any
    init_cache: Callable
    vocab_size: int
    sharding: Callable | None = None
    max_positions: int = 0


def cache_arrays(cache) -> list:
    """The cache's ``[L, B, S, ...]`` arrays (every leaf but ``index``)."""
    return jax.tree.leaves([v for k, v in cache._asdict().items() if k != INDEX])


def map_cache(fn: Callable, cache, index_fn: Callable = lambda index: index):
    """The cache with ``fn`` applied to each ``[L, B, S, ...]`` array and ``index_fn`` to
    ``index`` (``[B]``); works on any leaves (arrays, shapes, tracers)."""
    return cache._replace(
        **{
            k: index_fn(v) if k == INDEX else jax.tree.map(fn, v)
            for k, v in cache._asdict().items()
        }
    )
