"""Whole rounds are lossless: draft a multi-level tree, verify it, compare joint laws.

The law of one round's emitted tokens, continued by target sampling to
``L + 1`` tokens, must equal the target's joint law of ``L + 1`` tokens. Toy
draft/target models are order-3 n-gram tables, so every node's laws depend on
its path.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import toy
from rsd_jax import drafting, verify, walk
from rsd_jax import tree as tree_lib
from tests import broken, lawcheck

PREFIX = (2, 1)  # committed ids; the root token is the last one


def _id(x):
    return x.describe() if isinstance(x, tree_lib.TreeSpec) else str(x)


def _tables(vocab, seed, alpha=1.0, zero_frac=0.0):
    rng = np.random.default_rng(seed)
    draft = toy.random_table(rng, vocab, 3, alpha=alpha, zero_frac=zero_frac)
    target = toy.random_table(rng, vocab, 3, alpha=alpha, zero_frac=zero_frac)
    return draft, target


def _exact_gap(spec, verifier, vocab, seed, **kw):
    draft, target = _tables(vocab, seed, **kw)
    with jax.enable_x64(True):
        emitted = lawcheck.exact_round_law(spec, verifier, draft, target, PREFIX)
    length = spec.depth + 1
    ext = lawcheck.extended_law(emitted, target, PREFIX, length)
    return np.abs(ext - lawcheck.target_law(target, PREFIX, length)).max()


EXACT_CASES = [
    (tree_lib.chain(3), "sd", 4, {}),
    (tree_lib.branching((2, 2)), "rrs", 4, {}),
    (tree_lib.branching((2, 2)), "rrs", 4, {"alpha": 0.2, "zero_frac": 0.4}),
    (tree_lib.branching((3, 1)), "rrs", 4, {}),
    (tree_lib.branching((3, 1)), "rrs", 3, {"alpha": 0.2, "zero_frac": 0.5}),
    (tree_lib.branching((2, 2, 2)), "rrs", 3, {}),
    (tree_lib.iid(2, 2), "mrs", 3, {}),
    (tree_lib.iid(3, 2), "mrs", 3, {"alpha": 0.3}),
    (tree_lib.iid(2, 2), "kseq", 3, {}),
    (tree_lib.iid(3, 2), "kseq", 3, {"alpha": 0.3}),
]


@pytest.mark.parametrize("spec,name,vocab,kw", EXACT_CASES, ids=_id)
def test_exact_round_law_equals_target(spec, name, vocab, kw):
    """Exact enumeration of every drafted tree and decision (float64, 1e-9)."""
    gap = _exact_gap(spec, verify.get_verifier(name), vocab, seed=11, **kw)
    assert gap <= lawcheck.EXACT_TOL, f"{spec.describe()} {name}: max gap {gap}"


@pytest.mark.parametrize(
    "spec,bad",
    [
        (tree_lib.branching((2, 2)), broken.RRS_RAW_P),
        (tree_lib.branching((2, 2)), broken.RRS_UNNORMALISED),
        (tree_lib.iid(2, 2), broken.KSEQ_RHO_ONE),
    ],
    ids=lambda x: getattr(x, "name", None) or _id(x),
)
def test_exact_round_negative_controls(spec, bad):
    """The same enumeration rejects deliberately broken verifiers."""
    assert _exact_gap(spec, bad, 4, seed=11) > 1e-3


def _sampled_codes(spec, verifier, draft, target, n, seed, sbs_truncate=True):
    """n vmapped rounds; each output continued by target sampling to L+1 ids; codes.

    ``verifier``: a node verifier (walked) or a tree verifier (:mod:`rsd_jax.tree_verifiers`).
    """
    verify_fn = lawcheck.tree_rule(verifier).verify
    vocab, length = target.shape[-1], spec.depth + 1
    order = target.ndim
    ctx = jnp.asarray(toy.context_of(PREFIX[:-1], order, vocab), jnp.int32)
    last = jnp.asarray(toy.context_of(PREFIX, order, vocab), jnp.int32)
    dt, tt = jnp.asarray(draft, jnp.float32), jnp.asarray(target, jnp.float32)

    def draft_fn(tree, level):
        return toy.tree_probs(dt, ctx, tree)[spec.level_slice(level)]

    def one(key):
        k_draft, k_verify, k_extend = jax.random.split(key, 3)
        tree, p = drafting.draft_tree(k_draft, spec, PREFIX[-1], draft_fn, sbs_truncate)
        q = toy.tree_probs(tt, ctx, tree)
        res = verify_fn(k_verify, spec, tree, q, p)
        full = jnp.concatenate([last, res.tokens])
        k = order - 1
        for j in range(length):
            row = tt[tuple(full[j : j + k])]
            y = jax.random.categorical(jax.random.fold_in(k_extend, j), jnp.log(row))
            full = full.at[k + j].set(jnp.where(j >= res.num_emitted, y, full[k + j]))
        code = jnp.zeros((), jnp.int32)
        for j in range(length):
            code = code * vocab + full[k + j]
        return code

    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    codes = jax.jit(jax.vmap(one))(keys)
    return np.bincount(np.asarray(codes), minlength=vocab**length)


SAMPLED_CASES = [
    (tree_lib.beam(2, 2), "rrs", 3),
    (tree_lib.beam(3, 2), "rrs", 4),
    (tree_lib.beam(2, 3), "rrs", 3),
    (tree_lib.beam(3, 3), "rrs", 3),
    (tree_lib.branching((2, 2)), "rrs", 3),
    (tree_lib.iid(2, 2), "kseq", 3),
]


@pytest.mark.parametrize("spec,name,vocab", SAMPLED_CASES, ids=_id)
def test_sampled_round_law_equals_target(spec, name, vocab):
    """RSD-S trees (continuous SBS scores: no enumeration) and others, 10^5 rounds."""
    draft, target = _tables(vocab, seed=5, alpha=0.7)
    counts = _sampled_codes(spec, verify.get_verifier(name), draft, target, 100_000, seed=3)
    law = lawcheck.target_law(target, PREFIX, spec.depth + 1)
    assert lawcheck.chi2_pvalue(counts, law) >= lawcheck.ALPHA


@pytest.mark.parametrize(
    "spec", [tree_lib.beam(3, 2), tree_lib.branching((2, 2))], ids=lambda s: s.describe()
)
def test_sampled_round_negative_control(spec):
    """RRS with the raw p instead of p_k is rejected by the same statistical test."""
    draft, target = _tables(4, seed=5, alpha=0.7)
    counts = _sampled_codes(spec, broken.RRS_RAW_P, draft, target, 100_000, seed=3)
    law = lawcheck.target_law(target, PREFIX, spec.depth + 1)
    assert lawcheck.chi2_pvalue(counts, law) < lawcheck.ALPHA


def _round(spec, verifier, draft, target, key):
    dt, tt = jnp.asarray(draft, jnp.float32), jnp.asarray(target, jnp.float32)
    return lawcheck.speculative_round(key, spec, verifier, dt, tt, PREFIX)


def test_rsdc_with_unit_branching_is_sd_exactly():
    """RSD-C 1-1-1 + RRS reproduces SD on a chain draw for draw (same keys)."""
    draft, target = _tables(5, seed=2, alpha=0.5)
    sd = jax.jit(lambda k: _round(tree_lib.chain(3), verify.get_verifier("sd"), draft, target, k))
    rsdc_spec = tree_lib.branching((1, 1, 1))
    rsdc = jax.jit(lambda k: _round(rsdc_spec, verify.get_verifier("rrs"), draft, target, k))
    accepted = []
    for i in range(200):
        key = jax.random.PRNGKey(i)
        t_sd, r_sd = sd(key)
        t_c, r_c = rsdc(key)
        chex.assert_trees_all_equal(t_sd.tokens, t_c.tokens)
        chex.assert_trees_all_equal(r_sd, r_c)
        accepted.append(int(r_sd.num_accepted))
    assert len(set(accepted)) > 1  # the comparison covered several acceptance depths


def test_output_law_matches_sampled_walk():
    """For one fixed RSD-C tree, verify_tree's sampled outcomes follow output_law."""
    spec = tree_lib.branching((2, 2))
    draft, target = _tables(4, seed=9)
    tree, _ = _round(spec, verify.get_verifier("rrs"), draft, target, jax.random.PRNGKey(0))
    dt, tt = jnp.asarray(draft, jnp.float32), jnp.asarray(target, jnp.float32)
    ctx = jnp.asarray(toy.context_of(PREFIX[:-1], 3, 4), jnp.int32)
    p, q = toy.tree_probs(dt, ctx, tree), toy.tree_probs(tt, ctx, tree)
    rrs = verify.get_verifier("rrs")
    law_fn = jax.jit(lambda t, q, p: walk.output_law(spec, t, q, p, rrs))
    law = np.asarray(law_fn(tree, q, p), np.float64)
    np.testing.assert_allclose(law.sum(), 1.0, atol=1e-6)
    keys = jax.random.split(jax.random.PRNGKey(1), 100_000)
    res = jax.jit(jax.vmap(lambda k: walk.verify_tree(k, spec, tree, q, p, rrs)))(keys)
    last = np.where(
        np.asarray(res.num_accepted) > 0,
        np.asarray(res.path)[np.arange(len(keys)), np.maximum(np.asarray(res.num_accepted) - 1, 0)],
        0,
    )
    final = np.asarray(res.tokens)[np.arange(len(keys)), np.asarray(res.num_accepted)]
    counts = np.bincount(last * 4 + final, minlength=law.size)
    assert lawcheck.chi2_pvalue(counts, law.ravel() / law.sum()) >= lawcheck.ALPHA


def check_path(tree, res):
    """The accepted path's tokens are emitted and it descends one level per step."""
    n_acc = int(res.num_accepted)
    path = np.asarray(res.path)[:n_acc]
    np.testing.assert_array_equal(np.asarray(res.tokens)[:n_acc], tree.tokens[path])
    parents = np.asarray(tree.parents)
    for d, slot in enumerate(path):
        assert int(tree.depth[slot]) == d + 1
        assert parents[slot] == (0 if d == 0 else path[d - 1])
    assert np.all(np.asarray(res.path)[n_acc:] == -1)


def eos_chain():
    """A chain L=3 where draft == target, deterministic: root 1, then 0, then EOS (id 3).

    Returns ``(spec, tree, q, p, eos)``; every draft is accepted, so the EOS is on the path.
    """
    vocab, eos = 4, 3
    table = np.zeros((vocab + 1, vocab + 1, vocab))
    table[..., 0] = 1.0
    table[:, 0, :] = np.eye(vocab)[eos]  # after a 0 comes EOS
    spec = tree_lib.chain(3)
    dt = jnp.asarray(table, jnp.float32)
    ctx = jnp.asarray([vocab, vocab], jnp.int32)
    tree, p = drafting.draft_tree(
        jax.random.PRNGKey(0), spec, 1, lambda t, lvl: toy.tree_probs(dt, ctx, t)[lvl : lvl + 1]
    )
    return spec, tree, toy.tree_probs(dt, ctx, tree), p, eos


class WalkMechanicsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_path_tokens_and_counts_are_consistent(self):
        spec = tree_lib.beam(3, 3)
        draft, target = _tables(4, seed=4, alpha=0.5)
        rrs = verify.get_verifier("rrs")
        run = self.variant(lambda k: _round(spec, rrs, draft, target, k))
        for i in range(20):
            tree, res = run(jax.random.PRNGKey(i))
            n_acc, n_emit = int(res.num_accepted), int(res.num_emitted)
            self.assertEqual(n_emit, n_acc + 1)
            check_path(tree, res)

    def test_accepted_eos_ends_the_round(self):
        spec, tree, q, p, eos = eos_chain()
        sd = verify.get_verifier("sd")
        res = walk.verify_tree(jax.random.PRNGKey(1), spec, tree, q, p, sd, eos_id=eos)
        np.testing.assert_array_equal(res.tokens, [0, eos, -1, -1])
        self.assertEqual(int(res.num_emitted), 2)
        self.assertTrue(bool(res.hit_eos))
        res = walk.verify_tree(jax.random.PRNGKey(1), spec, tree, q, p, sd)  # no EOS id
        self.assertEqual(int(res.num_emitted), 4)
