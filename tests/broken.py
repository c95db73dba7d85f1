"""Deliberately broken verifiers: the negative controls of the exactness tests.

Each is a realistic bug. The same tests that accept the real rules must reject
these; otherwise those tests could not fail and would prove nothing.
"""

from __future__ import annotations

import jax.numpy as jnp

from rsd_jax import verify


def rrs_raw_p_plan(q, p, tokens, valid):
    """RRS using the raw draft law ``p`` instead of the renormalised ``p_k``."""
    laws = jnp.broadcast_to(p, tokens.shape + p.shape)
    return verify._recursive_plan(q, laws, tokens, valid)


def rrs_unnormalised_plan(q, p, tokens, valid):
    """RRS whose residual ``(r_k - p_k)^+`` is never renormalised."""
    from rsd_jax import gumbel

    laws = gumbel.without_replacement_laws(p, tokens, valid)
    r = q
    accept = []
    for k in range(tokens.shape[0]):
        x = tokens[k]
        a = jnp.where(valid[k], jnp.minimum(1.0, r[x] / jnp.maximum(laws[k, x], 1e-300)), 0.0)
        accept.append(a)
        r = jnp.where(valid[k], jnp.maximum(r - laws[k], 0.0), r)
    residual = r / jnp.maximum(r.sum(), 1e-300)  # the emission itself is normalised
    return verify.NodePlan(accept_prob=jnp.stack(accept), residual=residual)


def kseq_rho_one_plan(q, p, tokens, valid):
    """K-SEQ with ``rho`` fixed at 1 (i.e. no division of the acceptance)."""
    k = jnp.sum(valid)
    capped = jnp.minimum(p, q)
    beta = jnp.sum(capped)
    none_prob = (1.0 - beta) ** k
    accept_mass = (1.0 - none_prob) / jnp.where(beta > 0, beta, 1.0)
    raw = jnp.maximum(q - capped * accept_mass, 0.0)
    residual = verify.normalize(raw, q)
    a = verify._ratio_accept(q[tokens], p[tokens])
    return verify.NodePlan(accept_prob=jnp.where(valid, a, 0.0), residual=residual)


RRS_RAW_P = verify.NodeVerifier("rrs_raw_p", rrs_raw_p_plan, "without_replacement")
RRS_UNNORMALISED = verify.NodeVerifier("rrs_unnorm", rrs_unnormalised_plan, "without_replacement")
KSEQ_RHO_ONE = verify.NodeVerifier("kseq_rho1", kseq_rho_one_plan, "iid")
