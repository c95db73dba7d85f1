"""Sampling without replacement with the Gumbel-Top-k trick (docs/algorithms.md).

The ``k`` ids with the largest ``log p(x) + g(x)`` (``g`` i.i.d. Gumbel(0, 1)), in
descending order of that score, are an ordered sample without replacement from
``p``. The ``i``-th draw has the *renormalised* conditional law

    p_i(x) = p(x) 1[x not in {x_1..x_{i-1}}] / (1 - sum_{j<i} p(x_j)),

which is what recursive rejection sampling must use (not the raw ``p``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def gumbel_top_k(key: Array, log_probs: Array, k: int) -> tuple[Array, Array, Array]:
    """Draws ``k`` ids without replacement from ``exp(log_probs)``.

    Args:
      key: PRNG key.
      log_probs: ``[..., V]`` log-probabilities (``-inf`` = impossible id).
      k: static number of draws, ``1 <= k <= V``.

    Returns:
      ``(tokens, valid, scores)``, each ``[..., k]``: ids in draw order, whether
      the slot holds a real draw (False when fewer than ``k`` ids have
      ``p > 0``; such slots hold an arbitrary id and must never be used), and
      the perturbed scores (``-inf`` on invalid slots).
    """
    if not 1 <= k <= log_probs.shape[-1]:
        raise ValueError(f"k must be in [1, {log_probs.shape[-1]}], got {k}")
    g = jax.random.gumbel(key, log_probs.shape, dtype=log_probs.dtype)
    perturbed = jnp.where(jnp.isneginf(log_probs), -jnp.inf, log_probs + g)
    scores, tokens = jax.lax.top_k(perturbed, k)
    valid = jnp.isfinite(scores)
    return tokens.astype(jnp.int32), valid, scores


def without_replacement_laws(probs: Array, tokens: Array, valid: Array) -> Array:
    """Conditional laws ``p_1..p_K`` of an ordered without-replacement sample.

    Args:
      probs: ``[V]`` the base law ``p``.
      tokens: ``[K]`` ids in draw order.
      valid: ``[K]`` which slots hold real draws. Invalid slots must come after
        valid ones (as from :func:`gumbel_top_k` or a prefix of it).

    Returns:
      ``[K, V]``: row ``i`` is ``p_i``, the law slot ``i`` was drawn from given the
      earlier slots. Rows whose base mass is exhausted (only possible for
      invalid slots) are all zeros.
    """
    v = probs.shape[-1]
    taken = jax.nn.one_hot(tokens, v, dtype=jnp.bool_) & valid[:, None]  # [K, V]
    # removed_before[i] = ids drawn in slots < i.
    removed_before = jnp.cumsum(taken, axis=0, dtype=jnp.int32) - taken
    masked = jnp.where(removed_before > 0, 0.0, probs[None, :]).astype(probs.dtype)
    total = jnp.sum(masked, axis=-1, keepdims=True)
    laws = jnp.where(total > 0, masked / jnp.where(total > 0, total, 1.0), 0.0)
    # Nothing removed yet: the law is p itself, bit for bit (so K = 1 equals SD exactly).
    untouched = jnp.all(removed_before == 0, axis=-1, keepdims=True)
    return jnp.where(untouched, probs[None, :], laws)


def ordered_sample_prob(probs: Array, tokens: Array) -> Array:
    """Probability that a without-replacement draw yields exactly ``tokens`` in order.

    The product of the conditionals ``prod_i p_i(x_i)``; used to enumerate
    drafting outcomes exactly in tests and analyses.

    Args:
      probs: ``[V]``.
      tokens: ``[K]`` distinct ids.

    Returns:
      scalar probability.
    """
    laws = without_replacement_laws(probs, tokens, jnp.ones(tokens.shape, jnp.bool_))
    return jnp.prod(laws[jnp.arange(tokens.shape[0]), tokens])
