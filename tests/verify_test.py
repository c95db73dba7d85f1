"""Node verifiers are lossless: exact enumeration (float64, 1e-9) and sampling tests."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from rsd_jax import gumbel, verify
from tests import broken, lawcheck

Q_ANCHOR = np.array([0.2, 0.5, 0.3])
P_ANCHOR = np.array([0.6, 0.3, 0.1])

RULES = [("sd", 1), ("mrs", 1), ("mrs", 2), ("mrs", 3), ("kseq", 1), ("kseq", 2), ("kseq", 3)]
RULES += [("rrs", 1), ("rrs", 2), ("rrs", 3)]


def _cases():
    """(name, q, p) pairs over vocabularies of 3-6, including degenerate ones."""
    rng = np.random.default_rng(1234)
    cases = [("anchor", Q_ANCHOR, P_ANCHOR)]
    for v in (3, 4, 5, 6):
        cases.append((f"random{v}", rng.dirichlet(np.ones(v)), rng.dirichlet(np.ones(v))))
        cases.append((f"peaked{v}", rng.dirichlet(np.full(v, 0.1)), rng.dirichlet(np.full(v, 0.1))))
    one_hot = np.eye(4)[2]
    cases.append(("q_one_hot", one_hot, rng.dirichlet(np.ones(4))))
    cases.append(("p_one_hot", rng.dirichlet(np.ones(4)), one_hot))
    cases.append(("both_one_hot_equal", one_hot, one_hot))
    cases.append(("both_one_hot_differ", one_hot, np.eye(4)[0]))
    cases.append(("disjoint", np.array([0.5, 0.5, 0, 0, 0]), np.array([0, 0, 0.2, 0.3, 0.5])))
    equal = rng.dirichlet(np.ones(5))
    cases.append(("equal", equal, equal))
    cases.append(("p_small_support", rng.dirichlet(np.ones(5)), np.array([0.7, 0.3, 0, 0, 0])))
    return cases


class ExactEnumerationTest(parameterized.TestCase):
    """For every rule and case, the emitted token's exact law equals q (float64)."""

    @parameterized.parameters(*RULES)
    def test_law_equals_q(self, name, k):
        verifier = verify.get_verifier(name)
        with jax.enable_x64(True):
            for case, q, p in _cases():
                law, _ = lawcheck.node_law(verifier.plan, q, p, k, verifier.proposal)
                np.testing.assert_allclose(
                    law, q, rtol=0, atol=lawcheck.EXACT_TOL, err_msg=f"{name} K={k} {case}"
                )

    @parameterized.parameters(
        ("mrs", 1, 0.6),
        ("mrs", 2, 0.76),
        ("mrs", 3, 0.856),
        ("rrs", 1, 0.6),
        ("rrs", 2, 0.90),
        ("rrs", 3, 1.0),
        ("sd", 1, 0.6),
        ("kseq", 1, 0.6),
    )
    def test_toy_anchor_acceptance(self, name, k, expected):
        verifier = verify.get_verifier(name)
        with jax.enable_x64(True):
            law, acc = lawcheck.node_law(verifier.plan, Q_ANCHOR, P_ANCHOR, k, verifier.proposal)
        self.assertAlmostEqual(acc, expected, delta=lawcheck.EXACT_TOL)
        np.testing.assert_allclose(law, Q_ANCHOR, atol=lawcheck.EXACT_TOL)

    def test_kseq_between_sd_and_k_drafts(self):
        # SpecTr's K-SEQ: acceptance with K drafts is at least SD's and at most
        # 1 - (1 - beta(1))^K (what rho = 1 would give if it were lossless).
        with jax.enable_x64(True):
            _, acc1 = lawcheck.node_law(verify.kseq_plan, Q_ANCHOR, P_ANCHOR, 1, "iid")
            _, acc2 = lawcheck.node_law(verify.kseq_plan, Q_ANCHOR, P_ANCHOR, 2, "iid")
        self.assertGreater(acc2, acc1)
        self.assertLessEqual(acc2, 1 - 0.4**2 + 1e-12)

    def test_kseq_rho_solves_its_equation(self):
        with jax.enable_x64(True):
            q, p = jnp.asarray(Q_ANCHOR), jnp.asarray(P_ANCHOR)
            for k in (2, 3, 5):
                rho = verify.kseq_rho(q, p, k)
                beta = jnp.sum(jnp.minimum(p, q / rho))
                self.assertBetween(float(rho), 1.0, float(k))
                self.assertAlmostEqual(float(1 - (1 - beta) ** k), float(rho * beta), delta=1e-12)

    def test_kseq_rho_float32_default_steps_are_the_full_bisection(self):
        """40 float32 steps end where 80 do: the bracket has stopped moving."""
        rho = jax.jit(verify.kseq_rho, static_argnames="iters")
        for seed in range(30):
            kq, kp = jax.random.split(jax.random.PRNGKey(seed))
            q = jax.nn.softmax(3 * jax.random.normal(kq, (500,)))
            p = jax.nn.softmax(3 * jax.random.normal(kp, (500,)))
            for k in (2, 4, 7, 16):
                short = rho(q, p, k)
                self.assertEqual(float(short), float(rho(q, p, k, iters=80)))
                self.assertNotEqual(float(short), float(rho(q, p, k, iters=10)))

    @parameterized.parameters(
        (broken.RRS_RAW_P, 2),
        (broken.RRS_RAW_P, 3),
        (broken.RRS_UNNORMALISED, 3),
        (broken.KSEQ_RHO_ONE, 2),
    )
    def test_negative_controls_are_rejected(self, bad, k):
        # The same enumeration must expose each broken rule on the anchor.
        with jax.enable_x64(True):
            law, _ = lawcheck.node_law(bad.plan, Q_ANCHOR, P_ANCHOR, k, bad.proposal)
        tv = 0.5 * np.abs(law - Q_ANCHOR).sum()
        self.assertGreater(tv, 1e-3, f"{bad.name} K={k} was not detected (TV={tv})")

    def test_raw_p_bias_is_large(self):
        # docs/algorithms.md: using raw p biases the output by about 0.1 in TV.
        with jax.enable_x64(True):
            law, _ = lawcheck.node_law(
                broken.RRS_RAW_P.plan, Q_ANCHOR, P_ANCHOR, 2, "without_replacement"
            )
        self.assertGreater(0.5 * np.abs(law - Q_ANCHOR).sum(), 0.05)

    def test_rejected_token_leaves_residual(self):
        # A rejected X_k always has r_{k+1}(X_k) = 0: later identical draws are rejected.
        with jax.enable_x64(True):
            q, p = jnp.asarray(Q_ANCHOR), jnp.asarray(P_ANCHOR)
            plan = verify.mrs_plan(q, p, jnp.array([0, 0]), jnp.array([True, True]))
        self.assertEqual(float(plan.accept_prob[1]), 0.0)

    def test_unknown_verifier_is_a_clear_error(self):
        with self.assertRaisesRegex(ValueError, "unknown verifier 'nope'.*rrs"):
            verify.get_verifier("nope")

    def test_sd_rejects_several_children(self):
        with self.assertRaisesRegex(ValueError, "one child"):
            verify.sd_plan(
                jnp.ones(3) / 3, jnp.ones(3) / 3, jnp.zeros(2, jnp.int32), jnp.ones(2, bool)
            )


class SamplingTest(chex.TestCase):
    """The sampled decisions follow the plans, jitted or not, float32."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_sample_plan_matches_exact_decision_law(self):
        q, p = jnp.asarray(Q_ANCHOR, jnp.float32), jnp.asarray(P_ANCHOR, jnp.float32)
        tokens, valid = jnp.array([0, 1]), jnp.array([True, True])
        plan = verify.rrs_plan(q, p, tokens, valid)
        n = 100_000
        keys = jax.random.split(jax.random.PRNGKey(0), n)
        sample = self.variant(jax.vmap(lambda k: verify.sample_plan(k, plan, tokens)))
        d = sample(keys)
        # Outcomes: accept slot 0, accept slot 1, or residual token y (3 ids).
        a = np.asarray(plan.accept_prob, np.float64)
        res = np.asarray(plan.residual, np.float64)
        expected = np.concatenate([[a[0], (1 - a[0]) * a[1]], (1 - a[0]) * (1 - a[1]) * res])
        acc = np.asarray(d.accepted)
        tok = np.asarray(d.token)
        counts = np.array(
            [np.sum(acc == 0), np.sum(acc == 1)]
            + [np.sum((acc < 0) & (tok == y)) for y in range(3)]
        )
        self.assertGreaterEqual(lawcheck.chi2_pvalue(counts, expected), lawcheck.ALPHA)
        np.testing.assert_array_equal(tok[acc == 0], 0)
        np.testing.assert_array_equal(tok[acc == 1], 1)

    @chex.variants(with_jit=True, without_jit=True)
    def test_plans_are_float32_and_shaped(self):
        q = jnp.asarray(Q_ANCHOR, jnp.float32)
        p = jnp.asarray(P_ANCHOR, jnp.float32)
        for name in verify.VERIFIERS:
            k = 1 if name == "sd" else 3
            plan = self.variant(verify.get_verifier(name).plan)(
                q, p, jnp.arange(k, dtype=jnp.int32), jnp.ones(k, bool)
            )
            chex.assert_shape(plan.accept_prob, (k,))
            chex.assert_shape(plan.residual, (3,))
            chex.assert_type([plan.accept_prob, plan.residual], jnp.float32)
            chex.assert_tree_all_finite(plan)


def _node_emission_counts(verifier, q, p, k, n, seed):
    """Draft k children (i.i.d. or Gumbel-Top-k) and verify, n times; token counts."""
    q, p = jnp.asarray(q, jnp.float32), jnp.asarray(p, jnp.float32)

    def one(key):
        k_draft, k_verify = jax.random.split(key)
        if verifier.proposal == "iid":
            tokens = jax.random.categorical(k_draft, jnp.log(p), shape=(k,))
            valid = jnp.ones((k,), bool)
        else:
            tokens, valid, _ = gumbel.gumbel_top_k(k_draft, jnp.log(p), k)
        return verifier(k_verify, q, p, tokens, valid).token

    tokens = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(seed), n))
    return np.bincount(np.asarray(tokens), minlength=q.shape[0])


@pytest.mark.parametrize("name,k", [("sd", 1), ("mrs", 3), ("kseq", 3), ("rrs", 3)])
def test_sampled_emission_law_is_q(name, k):
    """10^5 vmapped draft+verify draws per rule: chi-square against q at level ALPHA."""
    counts = _node_emission_counts(verify.get_verifier(name), Q_ANCHOR, P_ANCHOR, k, 100_000, 7)
    assert lawcheck.chi2_pvalue(counts, Q_ANCHOR) >= lawcheck.ALPHA


@pytest.mark.parametrize("bad", [broken.RRS_RAW_P, broken.RRS_UNNORMALISED])
def test_sampled_negative_controls_are_rejected(bad):
    counts = _node_emission_counts(bad, Q_ANCHOR, P_ANCHOR, 2, 100_000, 7)
    assert lawcheck.chi2_pvalue(counts, Q_ANCHOR) < lawcheck.ALPHA


@pytest.mark.parametrize("name", ["sd", "mrs", "rrs"])
def test_child_with_zero_recorded_draft_probability_is_rejected(name):
    """Fail closed: if a drafted id's recorded draft probability is 0 (an engine bug: the
    law it was drawn from differs from the one recorded), it is never accepted, so an id
    the target gives probability 0 cannot come out."""
    q = jnp.array([0.5, 0.5, 0.0, 0.0])
    p = jnp.array([0.7, 0.3, 0.0, 0.0])
    tokens = jnp.array([2, 0]) if name != "sd" else jnp.array([2])
    valid = jnp.ones(tokens.shape, bool)
    plan = verify.get_verifier(name).plan(q, p, tokens, valid)
    assert float(plan.accept_prob[0]) == 0.0
    assert float(plan.residual[2]) == 0.0
