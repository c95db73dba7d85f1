"""Node verifiers: which child of a tree node (if any) to accept (docs/algorithms.md).

A verifier looks at one node with target law ``q``, draft law ``p`` and ordered
children ``X_1..X_K`` (some slots possibly invalid). Every rule here is written
in two layers:

* ``plan(q, p, tokens, valid) -> NodePlan``: the *exact* acceptance
  probabilities and the residual law. ``accept_prob[k]`` is the probability of
  accepting child ``k`` given that children ``< k`` were rejected, and
  ``residual`` is the law of the emitted token when all are rejected. Tests
  enumerate outcomes from this instead of only sampling.
* :func:`sample_plan`: turns a plan into a random decision with fresh uniforms.

Rules: ``sd`` (K = 1), ``mrs`` (multi-round with replacement, SpecInfer),
``rrs`` (recursive rejection for without-replacement siblings, RSD; uses the
renormalised conditionals ``p_k``), ``kseq`` (SpecTr's K-SEQ with ``rho``
solved by bisection). All are dtype-generic (float32 in production, float64
in the exactness tests) and jit/vmap friendly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rsd_jax import gumbel, transforms

Array = jax.Array


class NodePlan(NamedTuple):
    """Exact decision law at one node.

    Attributes:
      accept_prob: ``[K]`` P(accept child k | children < k rejected); 0 on invalid
        slots (they are skipped).
      residual: ``[V]`` law of the emitted token when every child is rejected.
        With no valid child this is ``q`` (the bonus token at a leaf).
    """

    accept_prob: Array
    residual: Array


def normalize(f: Array, fallback: Array) -> Array:
    """``f / sum(f)``, or ``fallback`` where ``sum(f) == 0`` (never divides by zero)."""
    total = jnp.sum(f, axis=-1, keepdims=True)
    return jnp.where(total > 0, f / jnp.where(total > 0, total, 1.0), fallback)


def _ratio_accept(r_x: Array, p_x: Array) -> Array:
    """``min(1, r_x / p_x)``; a child whose recorded draft probability is 0 is rejected.

    A correct engine never drafts such a child (it was drawn from ``p``). If the law a
    token was drawn from and the law recorded for it ever disagreed, accepting would emit
    tokens the target may give probability 0; rejecting leaves the emitted token to the
    residual, which only holds target mass (fail closed).
    """
    return jnp.where(p_x > 0, jnp.minimum(1.0, r_x / jnp.where(p_x > 0, p_x, 1.0)), 0.0)


def _recursive_plan(q: Array, proposal_laws: Array, tokens: Array, valid: Array) -> NodePlan:
    """Recursive rejection with proposal law ``proposal_laws[k]`` for child ``k``.

    ``r_1 = q``; accept ``X_k`` w.p. ``min(1, r_k(X_k) / p_k(X_k))``; on rejection
    ``r_{k+1} = norm((r_k - p_k)^+)``. When ``(r_k - p_k)^+`` is all zero then
    ``r_k == p_k``, acceptance is certain and the residual is never used, so it
    is left as ``r_k`` (no zero vector is ever normalised).
    """

    def body(r, inputs):
        p_k, x_k, ok = inputs
        a_k = _ratio_accept(r[x_k], p_k[x_k])
        r_next = normalize(jnp.maximum(r - p_k, 0.0), r)
        return jnp.where(ok, r_next, r), jnp.where(ok, a_k, 0.0)

    residual, accept = jax.lax.scan(body, q, (proposal_laws, tokens, valid))
    return NodePlan(accept_prob=accept, residual=residual)


def rrs_plan(q: Array, p: Array, tokens: Array, valid: Array) -> NodePlan:
    """Recursive rejection sampling for without-replacement children (RSD).

    Args:
      q: ``[V]`` target law at the node.
      p: ``[V]`` draft law at the node (the children are an ordered
        without-replacement sample, or a prefix of one, from it).
      tokens: ``[K]`` child ids in draw order.
      valid: ``[K]`` real children (a prefix of the slots).
    """
    laws = gumbel.without_replacement_laws(p, tokens, valid)
    return _recursive_plan(q, laws, tokens, valid)


def mrs_plan(q: Array, p: Array, tokens: Array, valid: Array) -> NodePlan:
    """Multi-round rejection sampling for i.i.d. children (SpecInfer)."""
    laws = jnp.broadcast_to(p, tokens.shape + p.shape)
    return _recursive_plan(q, laws, tokens, valid)


def sd_plan(q: Array, p: Array, tokens: Array, valid: Array) -> NodePlan:
    """Speculative sampling (Leviathan et al.; Chen et al.): one child, K == 1."""
    if tokens.shape[0] != 1:
        raise ValueError(f"sd verifies one child per node, got {tokens.shape[0]}")
    return mrs_plan(q, p, tokens, valid)


def kseq_rho(q: Array, p: Array, num_drafts: Array, iters: int | None = None) -> Array:
    """Solves ``1 - (1 - beta(rho))^K = rho beta(rho)`` for ``rho in [1, K]`` by bisection.

    ``f(rho) = 1 - (1 - beta)^K - rho beta`` is non-increasing with ``f(1) >= 0``
    and ``f(K) <= 0``. The upper end of the final bracket is returned: it always
    satisfies ``rho beta >= 1 - (1 - beta)^K``, which keeps the residual
    non-negative (losslessness holds for any such ``rho``; the root maximises
    acceptance). Each step is a sum over the vocabulary; by default 40 steps in
    float32 (the bracket over ``[1, K]`` reaches adjacent floats within
    ``24 + log2 K`` halvings and then no longer moves, so more steps change nothing
    for ``K < 2^16``) and 80 in float64.
    """
    if iters is None:
        iters = 40 if jnp.finfo(q.dtype).bits <= 32 else 80
    k = jnp.maximum(jnp.asarray(num_drafts, q.dtype), 1.0)

    def f(rho):
        beta = jnp.sum(jnp.minimum(p, q / rho))
        return 1.0 - (1.0 - beta) ** k - rho * beta

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        pos = f(mid) > 0
        return jnp.where(pos, mid, lo), jnp.where(pos, hi, mid)

    one = jnp.ones((), q.dtype)
    _, hi = jax.lax.fori_loop(0, iters, body, (one, k * one))
    return hi


def kseq_plan(q: Array, p: Array, tokens: Array, valid: Array) -> NodePlan:
    """K-SEQ (SpecTr) for ``K`` i.i.d. children; ``K`` = number of valid slots."""
    k = jnp.sum(valid)
    rho = kseq_rho(q, p, k)
    capped = jnp.minimum(p, q / rho)
    beta = jnp.sum(capped)
    none_prob = (1.0 - beta) ** k  # P(all K rejected)
    accept_mass = (1.0 - none_prob) / jnp.where(beta > 0, beta, 1.0)
    raw = jnp.maximum(q - capped * jnp.where(beta > 0, accept_mass, 0.0), 0.0)
    residual = normalize(raw, q)
    a = _ratio_accept(q[tokens] / rho, p[tokens])
    return NodePlan(accept_prob=jnp.where(valid, a, 0.0), residual=residual)


class NodeDecision(NamedTuple):
    """Outcome at one node.

    Attributes:
      accepted: index of the accepted child slot, or -1 when all were rejected.
      token: the accepted child's id, or the id drawn from the residual.
    """

    accepted: Array
    token: Array


def sample_plan(key: Array, plan: NodePlan, tokens: Array) -> NodeDecision:
    """Draws the node's decision from its exact plan with fresh uniforms.

    Args:
      key: PRNG key (independent of any drafting randomness).
      plan: from a verifier's ``plan``.
      tokens: ``[K]`` child ids.
    """
    k_accept, k_residual = jax.random.split(key)
    u = jax.random.uniform(k_accept, plan.accept_prob.shape, dtype=plan.accept_prob.dtype)
    hits = u < plan.accept_prob
    first = jnp.argmax(hits)
    any_hit = jnp.any(hits)
    residual_token = transforms.categorical(k_residual, transforms.safe_log(plan.residual))
    accepted = jnp.where(any_hit, first, -1).astype(jnp.int32)
    token = jnp.where(any_hit, tokens[first], residual_token).astype(jnp.int32)
    return NodeDecision(accepted=accepted, token=token)


PlanFn = Callable[[Array, Array, Array, Array], NodePlan]


@dataclasses.dataclass(frozen=True)
class NodeVerifier:
    """A named verification rule.

    Attributes:
      name: registry name.
      plan: ``(q, p, tokens, valid) -> NodePlan``.
      proposal: ``"iid"`` if siblings must be i.i.d. draws from ``p``,
        ``"without_replacement"`` if they must be an ordered sample without
        replacement (Gumbel-Top-k or SBS).
    """

    name: str
    plan: PlanFn
    proposal: str

    def __call__(self, key, q, p, tokens, valid) -> NodeDecision:
        return sample_plan(key, self.plan(q, p, tokens, valid), tokens)


VERIFIERS = {
    "sd": NodeVerifier("sd", sd_plan, "iid"),
    "mrs": NodeVerifier("mrs", mrs_plan, "iid"),
    "kseq": NodeVerifier("kseq", kseq_plan, "iid"),
    "rrs": NodeVerifier("rrs", rrs_plan, "without_replacement"),
}


def get_verifier(name: str) -> NodeVerifier:
    """Looks up a verifier by name; raises a ValueError listing the valid names."""
    try:
        return VERIFIERS[name]
    except KeyError:
        raise ValueError(f"unknown verifier {name!r}; choose one of {sorted(VERIFIERS)}") from None
