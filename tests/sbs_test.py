"""Stochastic beam search: stable truncated scores and the sequence-level law."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsd_jax import gumbel, sbs
from tests import lawcheck

P1 = np.array([0.5, 0.3, 0.2])  # level-1 law
P2 = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.45, 0.45]])  # p(b | a)


class TruncatedScoresTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_max_is_parent_score_and_order_is_kept(self):
        fn = self.variant(sbs.truncated_gumbel_scores)
        key = jax.random.PRNGKey(0)
        for parent in (-3.0, 0.0, 2.5):
            phi = jnp.log(jnp.asarray(P2)) - 1.0
            g = jax.random.gumbel(key, phi.shape)
            out = fn(jnp.full((3,), parent), phi, g)
            np.testing.assert_allclose(jnp.max(out, -1), parent, atol=1e-6)
            np.testing.assert_array_equal(jnp.argsort(out, -1), jnp.argsort(phi + g, -1))
            self.assertTrue(bool(jnp.all(out <= parent + 1e-6)))

    def test_matches_naive_formula_in_float64(self):
        with jax.enable_x64(True):
            rng = np.random.default_rng(0)
            phi = jnp.asarray(rng.normal(size=(5, 6)))
            g = jnp.asarray(rng.gumbel(size=(5, 6)))
            parent = jnp.asarray(rng.normal(size=5) - 1)
            gt = phi + g
            z = gt.max(-1, keepdims=True)
            naive = -jnp.log(jnp.exp(-parent[:, None]) - jnp.exp(-z) + jnp.exp(-gt))
            np.testing.assert_allclose(
                sbs.truncated_gumbel_scores(parent, phi, g), naive, rtol=1e-12
            )

    def test_extreme_values_stay_finite_and_impossible_ids_stay_neg_inf(self):
        phi = jnp.array([[-80.0, -jnp.inf, -85.0, -79.0]])
        g = jnp.array([[30.0, 0.0, -2.0, 0.5]])
        out = sbs.truncated_gumbel_scores(jnp.array([-50.0]), phi, g)
        self.assertTrue(bool(jnp.isneginf(out[0, 1])))
        self.assertTrue(bool(jnp.all(jnp.isfinite(out[0, jnp.array([0, 2, 3])]))))
        self.assertFalse(bool(jnp.any(jnp.isnan(out))))


def _level_one(key, width):
    out = sbs.sbs_level(
        key, jnp.zeros(1), jnp.zeros(1), jnp.ones(1, bool), jnp.log(jnp.asarray(P1))[None], width
    )
    return out.token


def test_depth_one_equals_gumbel_top_w_in_law():
    n, width = 200_000, 2
    tokens = jax.jit(jax.vmap(lambda k: _level_one(k, width)))(
        jax.random.split(jax.random.PRNGKey(0), n)
    )
    perms = list(itertools.permutations(range(3), width))
    index = {t: i for i, t in enumerate(perms)}
    codes = [index[tuple(r)] for r in np.asarray(tokens).tolist()]
    exact = [float(gumbel.ordered_sample_prob(jnp.asarray(P1), jnp.asarray(t))) for t in perms]
    assert lawcheck.chi2_pvalue(np.bincount(codes, minlength=len(perms)), exact) >= lawcheck.ALPHA


def _two_levels(key, width, truncate):
    k1, k2 = jax.random.split(key)
    log1, log2 = jnp.log(jnp.asarray(P1)), jnp.log(jnp.asarray(P2))
    l1 = sbs.sbs_level(
        k1, jnp.zeros(1), jnp.zeros(1), jnp.ones(1, bool), log1[None], width, truncate
    )
    l2 = sbs.sbs_level(k2, l1.phi, l1.score, l1.valid, log2[l1.token], width, truncate)
    first = l1.token[l2.parent]
    return first * 3 + l2.token  # sequence code, beam order


def _top2_sequence_counts(truncate, n=200_000):
    seqs = jax.jit(jax.vmap(lambda k: _two_levels(k, 2, truncate)))(
        jax.random.split(jax.random.PRNGKey(1), n)
    )
    seqs = np.asarray(seqs)
    counts = np.bincount(seqs[:, 0] * 9 + seqs[:, 1], minlength=81)
    probs = (P1[:, None] * P2).ravel()  # sequence law
    exact = np.zeros(81)
    for a in range(9):
        for b in range(9):
            if a != b:
                exact[a * 9 + b] = probs[a] * probs[b] / (1 - probs[a])
    return counts, exact


def test_final_beam_is_ordered_sample_of_sequences():
    """SBS with width W keeps the Gumbel-Top-W of whole sequences (Kool et al. 2019)."""
    counts, exact = _top2_sequence_counts(truncate=True)
    assert lawcheck.chi2_pvalue(counts, exact) >= lawcheck.ALPHA


def test_final_beam_negative_control_without_truncation():
    counts, exact = _top2_sequence_counts(truncate=False)
    assert lawcheck.chi2_pvalue(counts, exact) < lawcheck.ALPHA


class SbsLevelTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_small_support_and_invalid_parents(self):
        fn = self.variant(sbs.sbs_level, static_argnums=(5, 6))
        log_p = jnp.log(jnp.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]))
        out = fn(
            jax.random.PRNGKey(0),
            jnp.zeros(2),
            jnp.zeros(2),
            jnp.array([True, False]),
            log_p,
            3,
            True,
        )
        np.testing.assert_array_equal(out.valid, [True, False, False])
        self.assertEqual(int(out.token[0]), 1)
        self.assertEqual(int(out.parent[0]), 0)
        chex.assert_shape([out.parent, out.token, out.phi, out.score], (3,))

    @chex.variants(with_jit=True, without_jit=True)
    def test_beam_is_in_descending_score(self):
        fn = self.variant(sbs.sbs_level, static_argnums=(5,))
        log1 = jnp.log(jnp.asarray(P1))
        root = (jnp.zeros(1), jnp.zeros(1), jnp.ones(1, bool))
        out = fn(jax.random.PRNGKey(3), *root, log1[None], 3)
        self.assertTrue(bool(jnp.all(jnp.diff(out.score) <= 0)))
        np.testing.assert_allclose(out.score[0], 0.0, atol=1e-6)  # top child keeps G(root)


def _whole_vocabulary_level(key, phi_parent, score, valid, log_probs, width):
    """The SBS level written directly: truncate every (parent, id) pair, then top-W."""
    v = log_probs.shape[-1]
    phi_x = jnp.where(valid[:, None], phi_parent[:, None] + log_probs, -jnp.inf)
    g = jax.random.gumbel(key, phi_x.shape, dtype=phi_x.dtype)
    scores = sbs.truncated_gumbel_scores(jnp.where(valid, score, 0.0), phi_x, g)
    top, idx = jax.lax.top_k(scores.reshape(-1), width)
    ok = jnp.isfinite(top)
    return idx // v, idx % v, jnp.where(ok, phi_x.reshape(-1)[idx], -jnp.inf), top, ok


@pytest.mark.parametrize("parents,vocab,width", [(1, 7, 3), (2, 5, 4), (3, 4, 12), (4, 300, 4)])
def test_candidate_truncation_equals_whole_vocabulary(parents, vocab, width):
    """Truncating only each parent's top-W children gives the very same level."""
    for seed in range(20):
        k = jax.random.split(jax.random.PRNGKey(seed), 4)
        logits = 3 * jax.random.normal(k[0], (parents, vocab))
        logits = jnp.where(jax.random.bernoulli(k[1], 0.3, logits.shape), -jnp.inf, logits)
        logits = logits.at[:, 0].set(0.0)  # every row keeps some support
        log_p = jax.nn.log_softmax(logits, axis=-1)
        phi = -jax.random.exponential(k[2], (parents,))
        score = phi + jax.random.gumbel(k[3], (parents,))
        valid = jnp.arange(parents) < max(1, parents - seed % 2)
        out = sbs.sbs_level(k[3], phi, score, valid, log_p, width)
        ref = _whole_vocabulary_level(k[3], phi, score, valid, log_p, width)
        np.testing.assert_array_equal(out.valid, ref[4])
        ok = np.asarray(ref[4])
        np.testing.assert_array_equal(np.asarray(out.parent)[ok], np.asarray(ref[0])[ok])
        np.testing.assert_array_equal(np.asarray(out.token)[ok], np.asarray(ref[1])[ok])
        np.testing.assert_array_equal(out.phi, ref[2])
        np.testing.assert_array_equal(out.score, ref[3])
