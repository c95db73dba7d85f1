"""Preparing prompts for the engine: padding into buckets, token-id and context checks.

Host-side (numpy) helpers of :func:`rsd_jax.generation.generate` and
:func:`rsd_jax.generation.init_state`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def _id_error(row: int, position: int, token, vocab_size: int) -> ValueError:
    return ValueError(
        f"token id {token} (prompt {row}, position {position}) is outside the vocabulary "
        f"[0, {vocab_size})"
    )


def check_token_ids(prompts: Sequence[Sequence[int]], vocab_size: int) -> None:
    """Raises ValueError naming the first prompt id outside ``[0, vocab_size)``.

    An id past the vocabulary would read an embedding out of bounds (NaN) and a negative
    one would wrap around to the last ids, so neither may reach the model.
    """
    for row, p in enumerate(prompts):
        ids = np.asarray(p)
        if ids.dtype.kind in "iu" and ids.ndim == 1:
            bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
            if bad.size:
                raise _id_error(row, int(bad[0]), int(ids[bad[0]]), vocab_size)
            continue
        for i, t in enumerate(p):  # ints beyond int64, or not ints at all
            if not (isinstance(t, int | np.integer) and not isinstance(t, bool)):
                raise ValueError(f"prompt {row}, position {i}: token ids are integers, got {t!r}")
            if not 0 <= t < vocab_size:
                raise _id_error(row, i, t, vocab_size)


def check_context(models, longest: int, max_new_tokens: int) -> None:
    """Warns when ``longest + max_new_tokens`` passes a model's trained context."""
    for name, model in models:
        limit = getattr(model, "max_positions", 0) if model is not None else 0
        if limit and longest + max_new_tokens > limit:
            warnings.warn(
                f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} needs "
                f"{longest + max_new_tokens} positions, more than the {name}'s trained context "
                f"of {limit}: its predictions past position {limit} are unreliable",
                stacklevel=3,
            )


def pad_prompts(prompts: Sequence[Sequence[int]], bucket: int | None = None):
    """Right-pads prompts into ``[B, P]`` int32 plus ``[B]`` lengths.

    ``P`` is ``bucket`` if given (prompts of one bucket share a compiled step),
    else the longest prompt.
    """
    if not prompts:
        raise ValueError("no prompts given")
    lengths = [len(p) for p in prompts]
    width = bucket or max(lengths)
    if max(lengths) > width:
        raise ValueError(f"a prompt has {max(lengths)} tokens, more than the bucket {width}")
    out = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        out[i, : len(p)] = p
    return jnp.asarray(out), jnp.asarray(lengths, jnp.int32)
