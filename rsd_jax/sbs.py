"""Stochastic Beam Search (Kool, van Hoof, Welling 2019), one level at a time.

docs/algorithms.md. Each beam node ``v`` carries ``phi(v)`` (sum of draft
log-probs along its path) and a perturbed score ``G(v)``. Children get Gumbel
perturbed scores *truncated* so that their maximum equals ``G(v)``; the next
beam is the top-``W`` of all (parent, token) pairs jointly. With truncation the
final beam is a sample without replacement of whole sequences; a parent's kept
children, in descending score order, are a prefix of a without-replacement draw
from ``p(.|v)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class BeamLevel(NamedTuple):
    """One SBS level, ``W`` slots in descending score order.

    Attributes:
      parent: ``[W]`` index of each slot's parent in the previous level.
      token: ``[W]`` drafted id.
      phi: ``[W]`` path log-probability under the draft.
      score: ``[W]`` truncated perturbed score ``G``; ``-inf`` on invalid slots.
      valid: ``[W]`` whether the slot holds a real node.
    """

    parent: Array
    token: Array
    phi: Array
    score: Array
    valid: Array


def truncated_gumbel_scores(parent_score: Array, phi_x: Array, gumbel: Array) -> Array:
    """Children scores conditioned on their maximum being ``parent_score``.

    Stable form of ``-log(exp(-G) - exp(-Z) + exp(-Gt_x))`` with
    ``Gt_x = phi_x + gumbel`` and ``Z = max_x Gt_x``.

    Args:
      parent_score: ``[...]`` score ``G(v)`` of each parent (finite).
      phi_x: ``[..., V]`` ``phi(v) + log p(x | v)``; ``-inf`` for impossible ids.
      gumbel: ``[..., V]`` i.i.d. Gumbel(0, 1) noise.

    Returns:
      ``[..., V]`` truncated scores; impossible ids stay ``-inf``.
    """
    possible = jnp.isfinite(phi_x)
    g_tilde = jnp.where(possible, phi_x + gumbel, -jnp.inf)
    z = jnp.max(g_tilde, axis=-1, keepdims=True)
    g_parent = parent_score[..., None]
    # u = G - Gt + log(1 - exp(Gt - Z)); evaluated only where possible.
    gt_safe = jnp.where(possible, g_tilde, z)
    u = g_parent - gt_safe + jnp.log1p(-jnp.exp(gt_safe - z))
    out = g_parent - jax.nn.relu(u) - jnp.log1p(jnp.exp(-jnp.abs(u)))
    return jnp.where(possible, out, -jnp.inf)


def sbs_level(
    key: Array,
    parent_phi: Array,
    parent_score: Array,
    parent_valid: Array,
    log_probs: Array,
    width: int,
    truncate: bool = True,
) -> BeamLevel:
    """Expands a beam by one level and keeps the top-``width`` children jointly.

    Args:
      key: PRNG key.
      parent_phi: ``[P]`` path log-probs of the current beam (root: ``[0.]``).
      parent_score: ``[P]`` perturbed scores of the current beam (root: ``[0.]``).
      parent_valid: ``[P]`` which parents are real.
      log_probs: ``[P, V]`` draft log-probs ``log p(. | v)`` per parent.
      width: static beam width ``W`` (``<= P * V``).
      truncate: keep True. False drops the truncation (plain perturbed scores);
        it exists only so tests can show that the law test detects that bug.

    Returns:
      A :class:`BeamLevel` with ``W`` slots ordered by descending score.
    """
    num_parents, v = log_probs.shape
    if not 1 <= width <= num_parents * v:
        raise ValueError(f"width must be in [1, {num_parents * v}], got {width}")
    phi_x = parent_phi[:, None] + log_probs
    phi_x = jnp.where(parent_valid[:, None], phi_x, -jnp.inf)
    gumbel = jax.random.gumbel(key, phi_x.shape, dtype=phi_x.dtype)
    if not truncate:
        scores = jnp.where(jnp.isfinite(phi_x), phi_x + gumbel, -jnp.inf)
        top, flat_idx = jax.lax.top_k(scores.reshape(-1), width)
        parent = (flat_idx // v).astype(jnp.int32)
        token = (flat_idx % v).astype(jnp.int32)
        valid = jnp.isfinite(top)
        phi = jnp.where(valid, phi_x.reshape(-1)[flat_idx], -jnp.inf)
        return BeamLevel(parent=parent, token=token, phi=phi, score=top, valid=valid)
    # The truncation is increasing in a child's perturbed score and the beam keeps
    # `width` children in all, so only each parent's top-`width` perturbed children can
    # be kept: truncate those alone (the vocabulary-wide transcendental pass was the
    # costliest part of a level). Their maximum is the parent's maximum, so their
    # truncated scores are exactly those of the whole-vocabulary formula.
    g_tilde = jnp.where(jnp.isfinite(phi_x), phi_x + gumbel, -jnp.inf)
    per_parent = min(width, v)
    _, cand_token = jax.lax.top_k(g_tilde, per_parent)  # [P, k], descending
    cand_phi = jnp.take_along_axis(phi_x, cand_token, axis=-1)
    cand_gumbel = jnp.take_along_axis(gumbel, cand_token, axis=-1)
    safe_parent = jnp.where(parent_valid, parent_score, 0.0)
    scores = truncated_gumbel_scores(safe_parent, cand_phi, cand_gumbel)
    # Candidates in (parent, token id) order, so that ties between children resolve as
    # they would over the whole [P, V] array (towards the lower parent, then the lower id).
    order = jnp.argsort(cand_token, axis=-1, stable=True)
    cand_token = jnp.take_along_axis(cand_token, order, axis=-1)
    cand_phi = jnp.take_along_axis(cand_phi, order, axis=-1)
    scores = jnp.take_along_axis(scores, order, axis=-1)
    top, flat_idx = jax.lax.top_k(scores.reshape(-1), width)
    parent = (flat_idx // per_parent).astype(jnp.int32)
    token = cand_token.reshape(-1)[flat_idx]
    valid = jnp.isfinite(top)
    phi = jnp.where(valid, cand_phi.reshape(-1)[flat_idx], -jnp.inf)
    return BeamLevel(parent=parent, token=token, phi=phi, score=top, valid=valid)
