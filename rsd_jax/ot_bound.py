"""The optimal-transport bound on one node's acceptance (docs/algorithms.md).

At one tree node the target law is ``q`` over ``V`` tokens and ``K`` draft children
are drawn from ``p``, either i.i.d. (SD, MRS, SpecTr's K-SEQ) or without replacement
(Gumbel-Top-K, RSD; the ordered law is the product of the renormalised
conditionals of ``rsd_jax.gumbel``). A lossless verifier is a coupling of the
drafts with an emitted token ``Y ~ q``; it *accepts* when ``Y`` is one of the
drafts. Only the *set* ``S`` of distinct drafted tokens matters for that event, and
the best acceptance over all couplings (Hu et al. 2025) is

    alpha* = min over token sets A of [ q(V \\ A) + Pr(S meets A) ],

a min-cut / Hall-type formula. This module computes it exactly by enumerating
all ``2^V`` sets ``A`` (so ``V <= MAX_VOCAB``), and computes every verifier's exact
acceptance by enumerating the ordered draws and calling the real plans of
:mod:`rsd_jax.verify` (nothing is re-implemented here), so ``gap = alpha* -
acceptance`` is exact up to float64 rounding.

Numpy, float64, not jitted: an analysis tool for small vocabularies (real models
are first restricted to their top tokens, see ``experiments/bench/ot_gap.py``).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsd_jax import verify

MAX_VOCAB = 20  # 2^V subsets are enumerated
MAX_DRAWS = 2_000_000  # ordered draw sequences enumerated for a verifier
LAW_TOL = 1e-6  # |sum - 1| accepted for an input law


class Draws(NamedTuple):
    """Every ordered draw of ``K`` children with its probability.

    Attributes:
      tokens: ``[N, K]`` ids in draw order (arbitrary on invalid slots).
      valid: ``[N, K]`` real children; without replacement from a support of
        ``m < K`` ids only the first ``m`` slots are valid (as the sampler gives).
      probs: ``[N]`` probabilities, summing to one.
    """

    tokens: np.ndarray
    valid: np.ndarray
    probs: np.ndarray


class Bound(NamedTuple):
    """``alpha*`` and a set ``A`` attaining the minimum (sorted token ids)."""

    value: float
    subset: tuple[int, ...]


def check_law(x, name: str = "law") -> np.ndarray:
    """``x`` as a float64 vector after checking it is a distribution over ``<= MAX_VOCAB`` ids.

    Raises:
      ValueError: not 1-D, empty, too long, non-finite, negative or not summing to one.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {x.shape}")
    if x.size > MAX_VOCAB:
        raise ValueError(
            f"{name} has {x.size} tokens; exact enumeration over 2^V sets needs V <= "
            f"{MAX_VOCAB} (restrict to the top tokens first)"
        )
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError(f"{name} must be finite and non-negative, got {x}")
    if abs(x.sum() - 1.0) > LAW_TOL:
        raise ValueError(f"{name} must sum to 1 (within {LAW_TOL}), sums to {x.sum()!r}")
    return x


def _check_pair(q, p, k) -> tuple[np.ndarray, np.ndarray]:
    q, p = check_law(q, "q"), check_law(p, "p")
    if q.shape != p.shape:
        raise ValueError(f"q and p must have the same length, got {q.size} and {p.size}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    return q, p


# ----------------------------------------------------------------------------- draft laws


def ordered_draws(p, k: int, replacement: bool) -> Draws:
    """Every ordered outcome of drawing ``k`` children from ``p``, with its probability.

    Args:
      p: ``[V]`` draft law.
      k: number of children.
      replacement: True for i.i.d. draws, False for an ordered sample without
        replacement (probability = product of the renormalised conditionals).

    Raises:
      ValueError: bad inputs, or more than ``MAX_DRAWS`` outcomes.
    """
    p = check_law(p, "p")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    support = np.flatnonzero(p > 0)
    s = support.size
    m = k if replacement else min(k, s)
    count = s**k if replacement else math.perm(s, m)
    if count > MAX_DRAWS:
        raise ValueError(f"{count} ordered draws exceed MAX_DRAWS={MAX_DRAWS}")
    if replacement:
        grid = np.indices((s,) * k).reshape(k, -1).T  # [N, K] indices into the support
        tokens = support[grid]
        probs = np.prod(p[tokens], axis=1)
        valid = np.ones(tokens.shape, bool)
        return Draws(tokens.astype(np.int32), valid, probs)
    seqs = np.asarray(list(itertools.permutations(support, m)), np.int64).reshape(-1, m)
    taken = np.zeros((len(seqs), p.size), bool)
    probs = np.ones(len(seqs))
    for i in range(m):
        left = np.where(taken, 0.0, p[None, :]).sum(axis=1)  # summed, not 1 - sum(taken)
        probs *= p[seqs[:, i]] / left
        taken[np.arange(len(seqs)), seqs[:, i]] = True
    tokens = np.zeros((len(seqs), k), np.int32)
    tokens[:, :m] = seqs
    valid = np.zeros((len(seqs), k), bool)
    valid[:, :m] = True
    return Draws(tokens, valid, probs)


def _masks(draws: Draws) -> np.ndarray:
    """``[N]`` bitmask of the set of distinct valid tokens of each draw."""
    bits = np.where(draws.valid, np.left_shift(np.int64(1), draws.tokens.astype(np.int64)), 0)
    return np.bitwise_or.reduce(bits, axis=1)


def _mask_tokens(mask: int, vocab: int) -> tuple[int, ...]:
    return tuple(x for x in range(vocab) if (int(mask) >> x) & 1)


def draft_set_law(p, k: int, replacement: bool) -> dict[tuple[int, ...], float]:
    """Law of the *set* of distinct drafted tokens: ``{sorted ids: probability}``.

    Exact enumeration of :func:`ordered_draws`, aggregated over orders (and, for
    i.i.d. drafts, over repeats).
    """
    p = check_law(p, "p")
    draws = ordered_draws(p, k, replacement)
    law = np.bincount(_masks(draws), weights=draws.probs, minlength=1 << p.size)
    return {_mask_tokens(m, p.size): float(law[m]) for m in np.flatnonzero(law)}


# ----------------------------------------------------------------------------- the bound


def _subset_sums(x: np.ndarray) -> np.ndarray:
    """``[2^V]``: entry ``mask`` is ``sum_{i in mask} x[i]`` (bit ``i`` = token ``i``)."""
    out = np.zeros(1)
    for xi in x:
        out = np.concatenate([out, out + xi])
    return out


def _zeta(f: np.ndarray, vocab: int) -> np.ndarray:
    """Subset-sum transform: ``F[B] = sum_{S subset of B} f[S]`` over bitmasks."""
    f = f.copy()
    for i in range(vocab):
        view = f.reshape(-1, 2, 1 << i)
        view[:, 1, :] += view[:, 0, :]
    return f


def _minimise(values: np.ndarray, vocab: int) -> Bound:
    best = int(np.argmin(values))
    return Bound(float(values[best]), _mask_tokens(best, vocab))


def alpha_star_of_set_law(q, set_law: dict) -> Bound:
    """``alpha*`` for *any* law of the drafted set, given as ``{token ids: probability}``.

    ``Pr(S meets A) = 1 - Pr(S inside V \\ A)``, and ``Pr(S inside B)`` for every ``B``
    is one subset-sum transform of the set law (``O(V 2^V)``).
    """
    q = check_law(q, "q")
    vocab = q.size
    f = np.zeros(1 << vocab)
    for tokens, prob in set_law.items():
        if any(not 0 <= t < vocab for t in tokens):
            raise ValueError(f"set {tokens} has ids outside [0, {vocab})")
        f[sum(1 << t for t in set(tokens))] += prob
    if abs(f.sum() - 1.0) > LAW_TOL or np.any(f < 0):
        raise ValueError("set_law must be a distribution over token sets")
    inside = _zeta(f, vocab)  # inside[B] = Pr(S subset of B)
    comp = ((1 << vocab) - 1) ^ np.arange(1 << vocab)  # comp[A] = V \ A
    return _minimise(_subset_sums(q)[comp] + 1.0 - inside[comp], vocab)


def alpha_star(q, p, k: int, replacement: bool) -> Bound:
    """The best lossless acceptance at a node with ``k`` drafts from ``p`` and target ``q``.

    Args:
      q: ``[V]`` target law, ``V <= MAX_VOCAB``.
      p: ``[V]`` draft law.
      k: number of drafts.
      replacement: True for i.i.d. drafts (closed form ``Pr(S meets A) = 1 -
        (1 - p(A))^k``), False for drafts without replacement (exact set law).

    Returns:
      :class:`Bound` ``(value, minimising set A)``.

    Raises:
      ValueError: inputs are not distributions of the same length, ``V > MAX_VOCAB``,
        or ``k < 1``.
    """
    q, p = _check_pair(q, p, k)
    if not replacement:
        return alpha_star_of_set_law(q, draft_set_law(p, k, replacement=False))
    comp = ((1 << q.size) - 1) ^ np.arange(1 << q.size)
    miss = _subset_sums(p)[comp] ** k  # Pr(every draft outside A) = p(V \ A)^k
    return _minimise(_subset_sums(q)[comp] + 1.0 - miss, q.size)


# ----------------------------------------------------------------------------- verifiers


def uses_replacement(rule: str) -> bool:
    """True when verifier ``rule`` expects i.i.d. children, False for without replacement."""
    return verify.get_verifier(rule).proposal == "iid"


@functools.cache
def _batched_plan(rule: str):
    plan = verify.get_verifier(rule).plan
    return jax.jit(jax.vmap(lambda q, p, t, v: plan(q, p, t, v).accept_prob, (None, None, 0, 0)))


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Pads the leading axis to ``rows`` by repeating row 0 (a real draw, weight 0 below)."""
    return np.concatenate([x, np.repeat(x[:1], rows - len(x), axis=0)])


def verifier_acceptance(q, p, k: int, rule: str) -> float:
    """Exact probability that verifier ``rule`` accepts one of ``k`` children.

    The children are drawn as the rule requires (``sd``/``mrs``/``kseq``: i.i.d.;
    ``rrs``: without replacement); every ordered draw is enumerated and the rule's
    own plan from :mod:`rsd_jax.verify` gives its acceptance probabilities, in
    float64. The draws are padded to a power of two (weight 0) so that few shapes
    are compiled.
    """
    q, p = _check_pair(q, p, k)
    if rule == "sd" and k != 1:
        raise ValueError(f"sd verifies one child, got k={k}")
    draws = ordered_draws(p, k, uses_replacement(rule))
    n = len(draws.probs)
    rows = 1 << max(n - 1, 0).bit_length()
    with jax.enable_x64(True):
        accept = _batched_plan(rule)(
            jnp.asarray(q, jnp.float64),
            jnp.asarray(p, jnp.float64),
            jnp.asarray(_pad_rows(draws.tokens, rows)),
            jnp.asarray(_pad_rows(draws.valid, rows)),
        )
        accept = np.asarray(accept, np.float64)[:n]
    return float(np.sum(draws.probs * (1.0 - np.prod(1.0 - accept, axis=1))))


def gap(q, p, k: int, rule: str) -> float:
    """``alpha* - acceptance`` of ``rule`` with ``k`` children drawn as the rule requires."""
    bound = alpha_star(q, p, k, replacement=uses_replacement(rule))
    return bound.value - verifier_acceptance(q, p, k, rule)
