"""Sampling transforms: temperature, greedy, top-k, top-p, banned ids."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from rsd_jax import transforms

LOGITS = jnp.array([[1.0, 3.0, 0.5, 2.0, -1.0], [0.0, 0.0, 4.0, 1.0, 2.0]])


class TransformsTest(chex.TestCase, parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_temperature_is_tempered_softmax(self):
        fn = self.variant(transforms.probs_from_logits)
        for t in (0.3, 1.0, 2.5):
            np.testing.assert_allclose(
                fn(LOGITS, t), jax.nn.softmax(LOGITS / t, axis=-1), rtol=1e-6, atol=1e-7
            )

    @chex.variants(with_jit=True, without_jit=True)
    def test_zero_temperature_is_one_hot_argmax(self):
        probs = self.variant(transforms.probs_from_logits)(LOGITS, 0.0, 2, 0.5)
        np.testing.assert_array_equal(probs, jax.nn.one_hot(jnp.array([1, 2]), 5))

    @chex.variants(with_jit=True, without_jit=True)
    def test_top_k_keeps_exactly_k(self):
        probs = self.variant(transforms.probs_from_logits)(LOGITS, 1.0, 2)
        np.testing.assert_array_equal(probs > 0, [[0, 1, 0, 1, 0], [0, 0, 1, 0, 1]])
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
        # Renormalised restriction of the softmax.
        full = jax.nn.softmax(LOGITS[0])
        np.testing.assert_allclose(probs[0, 1] / probs[0, 3], full[1] / full[3], rtol=1e-6)

    def test_top_k_threshold_is_the_kth_largest_with_ties(self):
        """The bisection's mask equals the sort definition: values >= the k-th largest."""
        rng = np.random.default_rng(0)
        rows = [
            rng.normal(size=300).astype(np.float32) * 5,
            np.round(rng.normal(size=300) * 3).astype(np.float32),  # many ties
            np.concatenate([[-np.inf] * 5, rng.normal(size=20) - 40]).astype(np.float32),
            np.array([0.0, -0.0, 0.0, -1.0, 2.0], np.float32),
            np.array([-3e38, 3e38, -1.5, 1.5, 0.0], np.float32),  # extremes
        ]
        mask = jax.jit(transforms._top_k_mask)
        for row in rows:
            for k in (1, 2, 3, 7, len(row) - 1, len(row), len(row) + 3):
                kth = np.sort(row)[::-1][min(k, len(row)) - 1]
                np.testing.assert_array_equal(mask(row, k), row >= kth, err_msg=f"k={k}")
            np.testing.assert_array_equal(mask(row, 0), np.ones(len(row), bool))

    @chex.variants(with_jit=True, without_jit=True)
    def test_top_p_keeps_smallest_set_reaching_mass(self):
        fn = self.variant(transforms.probs_from_logits)
        full = np.asarray(jax.nn.softmax(LOGITS[0]))  # ~ [.08 .60 .05 .22 .01]
        order = np.argsort(-full)
        for top_p in (0.1, 0.6, 0.7, 0.9, 0.95, 1.0):
            probs = np.asarray(fn(LOGITS[:1], 1.0, 0, top_p))[0]
            mass_before = np.cumsum(full[order]) - full[order]
            expected = np.zeros(5, bool)
            expected[order[mass_before < top_p]] = True
            np.testing.assert_array_equal(probs > 0, expected, err_msg=f"top_p={top_p}")
            np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_banned_ids_never_have_mass(self):
        banned = transforms.vocab_mask(5, 3)
        fn = self.variant(transforms.probs_from_logits)
        for t in (0.0, 0.7):
            probs = fn(LOGITS, t, 0, 1.0, banned)
            np.testing.assert_array_equal(probs[:, 3:], 0.0)
            np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
        # Even greedy must not pick a banned id that has the largest logit.
        greedy = fn(jnp.array([0.0, 1.0, 0.5, 5.0, 2.0]), 0.0, 0, 1.0, banned)
        np.testing.assert_array_equal(greedy, [0, 1, 0, 0, 0])

    def test_runtime_values_do_not_recompile(self):
        @jax.jit
        @chex.assert_max_traces(n=1)
        def fn(logits, t, k, p):
            return transforms.probs_from_logits(logits, t, k, p)

        chex.clear_trace_counter()
        for t, k, p in [(1.0, 0, 1.0), (0.3, 3, 0.9), (0.0, 1, 0.5)]:
            fn(LOGITS, jnp.float32(t), jnp.int32(k), jnp.float32(p))

    def test_log_probs_are_exact_neg_inf_outside_support(self):
        lp = transforms.log_probs_from_logits(LOGITS, 1.0, 2)
        self.assertTrue(bool(jnp.all(jnp.isneginf(lp[0, jnp.array([0, 2, 4])]))))
        self.assertFalse(bool(jnp.any(jnp.isnan(lp))))

    @parameterized.parameters(
        dict(temperature=-1.0), dict(top_k=-2), dict(top_k=1.5), dict(top_p=0.0), dict(top_p=1.2)
    )
    def test_bad_sampling_params_are_clear_errors(self, **kw):
        with self.assertRaisesRegex(ValueError, list(kw)[0]):
            transforms.SamplingParams(**kw)

    @parameterized.parameters(
        dict(kw=dict(temperature=float("inf")), msg=r"temperature must be a finite number >= 0"),
        dict(kw=dict(temperature=float("nan")), msg=r"temperature must be a finite number >= 0"),
        dict(kw=dict(temperature=-0.5), msg=r"temperature must be a finite number >= 0"),
        dict(kw=dict(top_p=float("nan")), msg=r"top_p must be in \(0, 1\] \(1 = off\), got nan"),
        dict(kw=dict(top_p=float("inf")), msg=r"top_p must be in \(0, 1\]"),
    )
    def test_non_finite_sampling_params_name_the_setting_and_range(self, kw, msg):
        with self.assertRaisesRegex(ValueError, msg):
            transforms.SamplingParams(**kw)

    def test_boundary_sampling_params_are_accepted(self):
        transforms.SamplingParams(temperature=0.0, top_p=1.0)
        transforms.SamplingParams(temperature=1e6, top_p=1e-6)

    def test_bad_vocab_mask(self):
        with self.assertRaisesRegex(ValueError, "valid_vocab_size"):
            transforms.vocab_mask(5, 7)


def test_first_argmax_and_categorical_equal_jax_on_ties_and_banned_ids():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(64, 301)).astype(np.float32)  # many ties at the maximum
    x[:, 100:] = -np.inf  # banned tail, as after top-p or vocabulary padding
    np.testing.assert_array_equal(transforms.first_argmax(jnp.asarray(x)), np.argmax(x, -1))
    log_p = transforms.safe_log(jax.nn.softmax(jnp.asarray(x), axis=-1))
    for seed in range(5):
        key = jax.random.PRNGKey(seed)
        np.testing.assert_array_equal(
            transforms.categorical(key, log_p), jax.random.categorical(key, log_p)
        )
