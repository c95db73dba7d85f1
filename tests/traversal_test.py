"""Traversal verification (block verification on chains) is lossless and never worse.

Exact enumeration (float64, 1e-9) of every drafted RSD-C tree / SD chain and
of the traversal's outcome law; statistical tests (10^5 rounds, level fixed
in :mod:`tests.lawcheck`) for RSD-S trees, whose SBS scores are continuous.
Negative controls: two realistic bugs, patched into the module, must be
rejected by the same tests.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import toy
from rsd_jax import methods, traversal, tree_verifiers, verify, walk
from rsd_jax import tree as tree_lib
from tests import lawcheck
from tests.walk_test import PREFIX, _id, _round, _sampled_codes, _tables, check_path, eos_chain


def _capped_weight(alpha_parent, r_x, d_x):
    """Bug: caps the ratio before multiplying by the parent's weight."""
    return alpha_parent * verify._ratio_accept(r_x, d_x)


def _no_sibling_update(law, token):
    """Bug: keeps the raw draft law for later siblings (no without-replacement update)."""
    del token
    return law


TRAVERSAL = tree_verifiers.traversal()

BUGS = {
    "capped_weight": ("_child_weight", _capped_weight),
    "raw_siblings": ("_remove", _no_sibling_update),
}


def _round_law(spec, vocab, seed, rule=TRAVERSAL, **kw):
    draft, target = _tables(vocab, seed, **kw)
    with jax.enable_x64(True):
        emitted = lawcheck.exact_round_law(spec, rule, draft, target, PREFIX)
    return emitted, target


def _gap(spec, vocab, seed, **kw):
    emitted, target = _round_law(spec, vocab, seed, **kw)
    length = spec.depth + 1
    ext = lawcheck.extended_law(emitted, target, PREFIX, length)
    return np.abs(ext - lawcheck.target_law(target, PREFIX, length)).max()


def _tokens_per_round(emitted) -> float:
    return sum(len(seq) * mass for seq, mass in emitted.items())


EXACT_CASES = [
    (tree_lib.chain(2), 3, {}),
    (tree_lib.chain(3), 4, {}),
    (tree_lib.chain(3), 3, {"alpha": 0.2, "zero_frac": 0.4}),
    (tree_lib.branching((3,)), 4, {}),
    (tree_lib.branching((2, 2)), 4, {}),
    (tree_lib.branching((2, 2)), 4, {"alpha": 0.2, "zero_frac": 0.4}),
    (tree_lib.branching((3, 1)), 3, {"alpha": 0.2, "zero_frac": 0.5}),
    (tree_lib.branching((1, 3)), 4, {}),
    (tree_lib.branching((2, 1, 2)), 3, {"alpha": 0.5}),
]


@pytest.mark.parametrize("spec,vocab,kw", EXACT_CASES, ids=_id)
def test_exact_round_law_equals_target(spec, vocab, kw):
    """Every drafted tree and every test outcome enumerated: the round's law is the target's."""
    gap = _gap(spec, vocab, seed=11, **kw)
    assert gap <= lawcheck.EXACT_TOL, f"{spec.describe()}: max gap {gap}"


@pytest.mark.slow
def test_exact_round_law_three_levels():
    """RSD-C 2-2-2 over V=3: 279,936 drafted trees."""
    assert _gap(tree_lib.branching((2, 2, 2)), 3, seed=11) <= lawcheck.EXACT_TOL


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_exact_negative_controls(bug, monkeypatch):
    """The same enumeration rejects a traversal with a realistic bug."""
    monkeypatch.setattr(traversal, *BUGS[bug])
    assert _gap(tree_lib.branching((2, 2)), 4, seed=11) > 1e-3


def test_one_level_is_recursive_rejection_exactly():
    """With one level, traversal is RRS: identical exact outcome laws for every tree."""
    spec = tree_lib.branching((3,))
    draft, target = _tables(4, seed=3)
    trees, _ = lawcheck.enumerate_trees(spec, draft, PREFIX)
    ctx = jnp.asarray(toy.context_of(PREFIX[:-1], 3, 4), jnp.int32)
    rrs = verify.get_verifier("rrs")
    with jax.enable_x64(True):
        dt, tt = jnp.asarray(draft), jnp.asarray(target)

        def both(tree):
            p, q = toy.tree_probs(dt, ctx, tree), toy.tree_probs(tt, ctx, tree)
            return traversal.output_law(spec, tree, q, p), walk.output_law(spec, tree, q, p, rrs)

        tv, rr = jax.vmap(both)(trees)
        np.testing.assert_allclose(np.asarray(tv), np.asarray(rr), atol=1e-12)


@pytest.mark.parametrize("length,vocab", [(2, 3), (3, 4), (4, 3)])
def test_block_verification_never_below_token_level(length, vocab):
    """Chains: expected tokens per round of block verification >= token-level SD, 6 tables each."""
    spec = tree_lib.chain(length)
    sd = verify.get_verifier("sd")
    gains = []
    for seed in range(6):
        block, _ = _round_law(spec, vocab, seed, alpha=0.6)
        token, _ = _round_law(spec, vocab, seed, rule=sd, alpha=0.6)
        gains.append(_tokens_per_round(block) - _tokens_per_round(token))
    assert min(gains) >= -1e-12, gains
    assert max(gains) > 1e-3  # and strictly better somewhere: the comparison has teeth


SAMPLED_CASES = [
    (tree_lib.beam(2, 2), 3),
    (tree_lib.beam(3, 2), 4),
    (tree_lib.beam(2, 3), 3),
    (tree_lib.beam(3, 3), 3),
    (tree_lib.branching((2, 2)), 3),
]


@pytest.mark.parametrize("spec,vocab", SAMPLED_CASES, ids=_id)
def test_sampled_round_law_equals_target(spec, vocab):
    """RSD-S trees (SBS: no enumeration) and RSD-C, 10^5 sampled rounds, chi-square."""
    draft, target = _tables(vocab, seed=5, alpha=0.7)
    counts = _sampled_codes(spec, TRAVERSAL, draft, target, 100_000, seed=3)
    law = lawcheck.target_law(target, PREFIX, spec.depth + 1)
    assert lawcheck.chi2_pvalue(counts, law) >= lawcheck.ALPHA


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_sampled_negative_controls(bug, monkeypatch):
    """The statistical test rejects the buggy traversals on RSD-S trees."""
    monkeypatch.setattr(traversal, *BUGS[bug])
    spec = tree_lib.beam(3, 2)
    draft, target = _tables(4, seed=5, alpha=0.7)
    counts = _sampled_codes(spec, TRAVERSAL, draft, target, 100_000, seed=3)
    law = lawcheck.target_law(target, PREFIX, spec.depth + 1)
    assert lawcheck.chi2_pvalue(counts, law) < lawcheck.ALPHA


def _fixed_tree(spec, vocab=4, seed=9):
    draft, target = _tables(vocab, seed=seed)
    tree, _ = _round(spec, verify.get_verifier("rrs"), draft, target, jax.random.PRNGKey(0))
    dt, tt = jnp.asarray(draft, jnp.float32), jnp.asarray(target, jnp.float32)
    ctx = jnp.asarray(toy.context_of(PREFIX[:-1], 3, vocab), jnp.int32)
    return tree, toy.tree_probs(tt, ctx, tree), toy.tree_probs(dt, ctx, tree)


@pytest.mark.parametrize("spec", [tree_lib.branching((2, 2)), tree_lib.beam(3, 2)], ids=_id)
def test_sampler_follows_exact_law(spec):
    """For one fixed tree, sampled (accepted node, emitted token) pairs follow output_law."""
    tree, q, p = _fixed_tree(spec)
    law = np.asarray(jax.jit(lambda: traversal.output_law(spec, tree, q, p))(), np.float64)
    np.testing.assert_allclose(law.sum(), 1.0, atol=1e-6)
    keys = jax.random.split(jax.random.PRNGKey(1), 100_000)
    res = jax.jit(jax.vmap(lambda k: traversal.verify_tree(k, spec, tree, q, p)))(keys)
    n_acc = np.asarray(res.num_accepted)
    rows = np.arange(len(keys))
    last = np.where(n_acc > 0, np.asarray(res.path)[rows, np.maximum(n_acc - 1, 0)], 0)
    final = np.asarray(res.tokens)[rows, n_acc]
    counts = np.bincount(last * 4 + final, minlength=law.size)
    assert lawcheck.chi2_pvalue(counts, law.ravel() / law.sum()) >= lawcheck.ALPHA


class TraversalMechanicsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_path_tokens_and_counts_are_consistent(self):
        spec = tree_lib.beam(3, 3)
        draft, target = _tables(4, seed=4, alpha=0.5)
        dt, tt = jnp.asarray(draft, jnp.float32), jnp.asarray(target, jnp.float32)
        ctx = jnp.asarray(toy.context_of(PREFIX[:-1], 3, 4), jnp.int32)
        rrs = verify.get_verifier("rrs")

        def run(key):
            tree, _ = lawcheck.speculative_round(key, spec, rrs, dt, tt, PREFIX)
            q, p = toy.tree_probs(tt, ctx, tree), toy.tree_probs(dt, ctx, tree)
            return tree, traversal.verify_tree(jax.random.fold_in(key, 1), spec, tree, q, p)

        run = self.variant(run)
        depths = set()
        for i in range(20):
            tree, res = run(jax.random.PRNGKey(i))
            n_acc, n_emit = int(res.num_accepted), int(res.num_emitted)
            depths.add(n_acc)
            self.assertEqual(n_emit, n_acc + 1)
            check_path(tree, res)
        self.assertGreater(len(depths), 1)

    def test_eos_on_the_accepted_path_ends_the_round(self):
        spec, tree, q, p, eos = eos_chain()
        res = traversal.verify_tree(jax.random.PRNGKey(1), spec, tree, q, p, eos_id=eos)
        np.testing.assert_array_equal(res.tokens, [0, eos, -1, -1])
        np.testing.assert_array_equal(res.path, [1, 2, -1])
        self.assertEqual(int(res.num_emitted), 2)
        self.assertTrue(bool(res.hit_eos))
        res = traversal.verify_tree(jax.random.PRNGKey(1), spec, tree, q, p)  # no EOS id
        self.assertEqual(int(res.num_emitted), 4)


def test_method_syntax_and_errors():
    assert methods.parse("rsd_s:3x2/tv").tree_verifier == TRAVERSAL
    assert methods.parse("sd:4/tv").name == "SD/BV"
    assert methods.parse("rsd_c:2-2/tv").name == "RSD-C/TV"
    for bad in ("mrs:2x2/tv", "spectr:2x2/tv", "ar/tv", "rsd_c:2-2/xyz"):
        with pytest.raises(ValueError, match="bad method"):
            methods.parse(bad)
    with pytest.raises(ValueError, match="without-replacement"):
        methods.with_traversal(methods.mrs(2, 2))


@pytest.mark.parametrize("spec", [tree_lib.branching((2, 2)), tree_lib.beam(3, 2)], ids=_id)
def test_expected_tokens_equals_the_exact_law(spec):
    """The residual-free pass (probes) gives the same expectation as the full exact law."""
    tree, q, p = _fixed_tree(spec)
    law = traversal.output_law(spec, tree, q, p)
    want = jnp.sum(jnp.sum(law, axis=1) * (tree.depth + 1))
    np.testing.assert_allclose(traversal.expected_tokens(spec, tree, q, p), want, rtol=1e-5)
