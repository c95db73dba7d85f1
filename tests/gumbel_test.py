"""Gumbel-Top-k draws an ordered sample without replacement with the right law."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rsd_jax import gumbel
from tests import lawcheck

P = np.array([0.45, 0.3, 0.15, 0.1])


def _ordered_counts(sampler, k, n=200_000, seed=0):
    tokens = sampler(jax.random.PRNGKey(seed), jnp.broadcast_to(jnp.log(P), (n, 4)), k)
    perms = list(itertools.permutations(range(4), k))
    index = {t: i for i, t in enumerate(perms)}
    codes = [index[tuple(int(x) for x in row)] for row in np.asarray(tokens)]
    exact = [float(gumbel.ordered_sample_prob(jnp.asarray(P), jnp.asarray(t))) for t in perms]
    return np.bincount(codes, minlength=len(perms)), np.asarray(exact)


def _gumbel_sampler(key, log_p, k):
    return gumbel.gumbel_top_k(key, log_p, k)[0]


def _uniform_noise_sampler(key, log_p, k):
    """Negative control: top-k of log p + Uniform noise (not Gumbel)."""
    return jax.lax.top_k(log_p + jax.random.uniform(key, log_p.shape), k)[1]


def test_order_law_is_product_of_conditionals():
    for k in (2, 3):
        counts, exact = _ordered_counts(jax.jit(_gumbel_sampler, static_argnums=2), k)
        np.testing.assert_allclose(exact.sum(), 1.0, atol=1e-6)
        assert lawcheck.chi2_pvalue(counts, exact) >= lawcheck.ALPHA


def test_order_law_negative_control():
    counts, exact = _ordered_counts(jax.jit(_uniform_noise_sampler, static_argnums=2), 2)
    assert lawcheck.chi2_pvalue(counts, exact) < lawcheck.ALPHA


def test_exact_ordered_probs_sum_to_one():
    with jax.enable_x64(True):
        for k in (1, 2, 3, 4):
            total = sum(
                float(gumbel.ordered_sample_prob(jnp.asarray(P), jnp.asarray(t)))
                for t in itertools.permutations(range(4), k)
            )
            assert abs(total - 1.0) < 1e-12


class GumbelTopKTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_small_support_gives_invalid_slots(self):
        log_p = jnp.log(jnp.array([0.0, 0.7, 0.0, 0.3]))
        fn = self.variant(gumbel.gumbel_top_k, static_argnums=2)
        for seed in range(20):
            tokens, valid, scores = fn(jax.random.PRNGKey(seed), log_p, 3)
            np.testing.assert_array_equal(valid, [True, True, False])
            self.assertEqual(set(np.asarray(tokens[:2]).tolist()), {1, 3})
            self.assertTrue(bool(jnp.isneginf(scores[2])))

    @chex.variants(with_jit=True, without_jit=True)
    def test_batched_shapes(self):
        fn = self.variant(gumbel.gumbel_top_k, static_argnums=2)
        tokens, valid, scores = fn(jax.random.PRNGKey(0), jnp.zeros((2, 3, 7)), 4)
        chex.assert_shape([tokens, valid, scores], (2, 3, 4))
        chex.assert_type(tokens, jnp.int32)
        # Distinct within each draw, scores descending.
        for row in np.asarray(tokens).reshape(-1, 4):
            self.assertEqual(len(set(row.tolist())), 4)
        self.assertTrue(bool(jnp.all(jnp.diff(scores, axis=-1) <= 0)))

    def test_bad_k(self):
        with self.assertRaisesRegex(ValueError, "k must be"):
            gumbel.gumbel_top_k(jax.random.PRNGKey(0), jnp.zeros(3), 4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_without_replacement_laws(self):
        p = jnp.asarray(P, jnp.float32)
        laws = self.variant(gumbel.without_replacement_laws)(
            p, jnp.array([1, 3, 0, 2]), jnp.array([True, True, True, False])
        )
        np.testing.assert_array_equal(laws[0], p)  # untouched first law, bit for bit
        np.testing.assert_allclose(laws.sum(-1)[:3], 1.0, rtol=1e-6)
        np.testing.assert_allclose(laws[1], np.array([0.45, 0, 0.15, 0.1]) / 0.7, rtol=1e-6)
        np.testing.assert_array_equal(laws[2] > 0, [True, False, True, False])
        # The invalid 4th slot does not remove anything: it sees only 0, 1, 3 removed.
        np.testing.assert_allclose(laws[3], [0, 0, 1, 0], rtol=1e-6)
