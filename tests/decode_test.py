"""Decoding engine end to end on toy cached LMs with known conditionals.

``models.toy.cached_forward`` predicts from the visible cache entries with the
largest positions, so any bug in masks, positions, cache writes or commits
changes its contexts, and with them the output law or the greedy output.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import testing, toy
from rsd_jax import decode, methods, transforms
from rsd_jax import generation as gen
from tests import broken, lawcheck

V = 4
METHODS = [
    "ar",
    "sd:3",
    "mrs:2x2",
    "spectr:2x2",
    "rsd_c:2-2",
    "rsd_c:2-1-1",
    "rsd_s:3x2",
    "rsd_s:2x3",
    "sd:3/tv",
    "rsd_c:2-1-1/tv",
    "rsd_s:3x2/tv",
]
GREEDY = transforms.SamplingParams(temperature=0.0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("driver", ["while", "python"])
def test_greedy_equals_autoregressive_greedy(method, driver):
    target, draft, _ = testing.toy_pair()
    prompts = [[1, 2, 3], [0, 3], [2, 2, 2, 2, 1], [3, 1]]
    key = jax.random.PRNGKey(0)
    ref = gen.generate(target, None, prompts, "ar", key=key, max_new_tokens=10, sampling=GREEDY)
    out = gen.generate(
        target, draft, prompts, method, key=key, max_new_tokens=10, sampling=GREEDY, driver=driver
    )
    assert out.tokens == ref.tokens
    assert all(len(t) == 10 for t in out.tokens)


def _first_tokens_counts(method, prompt, n, seed, target, draft):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    out = gen.generate(
        target, draft, [prompt] * n, method, key=keys[0], keys=keys, max_new_tokens=3
    )
    codes = [lawcheck.seq_code(t[:3], V) for t in out.tokens]
    return np.bincount(codes, minlength=V**3), out


@pytest.mark.parametrize("method", METHODS)
def test_law_of_first_three_tokens_is_the_target_law(method):
    """3 x 10^4 generations per method: chi-square on the 64 joint outcomes at level ALPHA."""
    target, draft, table = testing.toy_pair(seed=1)
    prompt = [1, 3, 0]
    counts, _ = _first_tokens_counts(method, prompt, 30_000, 2, target, draft)
    law = lawcheck.target_law(table, tuple(prompt), 3)
    assert lawcheck.chi2_pvalue(counts, law) >= lawcheck.ALPHA


def test_law_negative_control():
    """The same end-to-end test rejects RSD-C verified with raw p instead of p_k."""
    target, draft, table = testing.toy_pair(seed=1)
    bad = methods.Method("RSD-C/raw-p", methods.tree_lib.branching((3, 2)), broken.RRS_RAW_P)
    prompt = [1, 3, 0]
    counts, _ = _first_tokens_counts(bad, prompt, 30_000, 2, target, draft)
    law = lawcheck.target_law(table, tuple(prompt), 3)
    assert lawcheck.chi2_pvalue(counts, law) < lawcheck.ALPHA


@pytest.mark.parametrize("method", ["sd:3", "spectr:2x2", "rsd_c:2-2", "rsd_s:3x2"])
def test_committed_cache_equals_recomputed_prefix(method):
    """After generation, both caches hold exactly the committed tokens at their positions.

    The draft may lag by the last committed token (an accepted leaf it never
    read); each round's first draft call re-reads that token, so only slots
    before it are required to be committed.
    """
    target, draft, _ = testing.toy_pair()
    prompts = [[1, 2, 3], [0, 3], [2, 2, 2, 2, 1]]
    out = gen.generate(target, draft, prompts, method, key=jax.random.PRNGKey(3), max_new_tokens=9)
    state = out.state
    for cache, lag in ((state.target_cache, 0), (state.draft_cache, 1)):
        for b in range(len(prompts)):
            n = int(state.length[b]) - lag
            np.testing.assert_array_equal(cache.tokens[0, b, :n], state.tokens[b, :n])
            np.testing.assert_array_equal(cache.positions[0, b, :n], np.arange(n))


def test_batch_invariance_with_per_sequence_keys():
    target, draft, _ = testing.toy_pair()
    prompts = [[1, 2, 3], [0, 3], [2, 2, 2, 2, 1]]
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    together = gen.generate(
        target, draft, prompts, "rsd_s:3x2", key=keys[0], keys=keys, max_new_tokens=12, bucket=6
    )
    for i, prompt in enumerate(prompts):
        alone = gen.generate(
            target,
            draft,
            [prompt],
            "rsd_s:3x2",
            key=keys[i],
            keys=keys[i : i + 1],
            max_new_tokens=12,
            bucket=6,
        )
        assert alone.tokens[0] == together.tokens[i]


def test_step_is_traced_once_across_rounds_and_prompts():
    target, draft, _ = testing.toy_pair()
    engine = decode.Engine(methods.parse("rsd_c:2-2"), toy.cached_forward, toy.cached_forward, V)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, tp, dp):
        return engine.step(state, tp, dp)

    chex.clear_trace_counter()
    for prompts in ([[1, 2, 3], [0, 3]], [[3, 3, 1, 1], [2, 0, 1]]):
        padded, lengths = gen.pad_prompts(prompts, bucket=4)
        keys = jax.random.split(jax.random.PRNGKey(0), 2)
        state = gen.init_state(engine, target, draft, padded, lengths, keys, 8)
        for _ in range(4):
            state = step(state, target.params, draft.params)


def test_eos_and_budget():
    target, draft, _ = testing.toy_pair()
    prompts = [[1, 2, 3], [0, 3]]
    out = gen.generate(
        target, draft, prompts, "rsd_c:2-2", key=jax.random.PRNGKey(5), max_new_tokens=20
    )
    eos = out.tokens[0][2]
    stopped = gen.generate(
        target,
        draft,
        prompts,
        "rsd_c:2-2",
        key=jax.random.PRNGKey(5),
        max_new_tokens=20,
        eos_id=eos,
    )
    for full, cut in zip(out.tokens, stopped.tokens, strict=True):
        assert cut[-1] == eos and eos not in cut[:-1]
        assert full[: len(cut)] == cut  # same keys: identical up to the stop


def test_counters_are_consistent():
    target, draft, _ = testing.toy_pair()
    out = gen.generate(
        target, draft, [[1, 2, 3]] * 4, "rsd_s:3x2", key=jax.random.PRNGKey(1), max_new_tokens=16
    )
    c = out.counters
    np.testing.assert_array_equal(c.accepted_hist.sum(1), c.target_calls)
    np.testing.assert_array_equal((c.accepted_hist * (np.arange(3) + 1)).sum(1), c.generated)
    np.testing.assert_array_equal(c.draft_calls, 2 * c.target_calls)
    np.testing.assert_array_equal(c.nodes_scored, 6 * c.target_calls)
    assert np.all(c.generated >= 16)


def test_clear_errors():
    target, draft, _ = testing.toy_pair()
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        gen.generate(target, draft, [[1]], "sd:2", key=key, max_new_tokens=4)
    with pytest.raises(ValueError, match="needs a draft"):
        gen.generate(target, None, [[1, 2]], "sd:2", key=key, max_new_tokens=4)
    small = draft._replace(vocab_size=V + 1)
    with pytest.raises(ValueError, match="vocabulary"):
        gen.generate(target, small, [[1, 2]], "sd:2", key=key, max_new_tokens=4)
    with pytest.raises(ValueError, match="bucket"):
        gen.generate(target, draft, [[1, 2, 3]], "sd:2", key=key, max_new_tokens=4, bucket=2)
    with pytest.raises(ValueError, match="bad method"):
        gen.generate(target, draft, [[1, 2]], "rsd_s:3", key=key, max_new_tokens=4)


@pytest.mark.parametrize("method", ["sd:3", "mrs:2x3", "spectr:2x3", "rsd_c:2-2-1", "rsd_s:2x3"])
def test_identical_draft_is_always_fully_accepted(method):
    """With draft == target, p == q at every node, so every round accepts all L drafts.

    Fails if the engine feeds the draft wrong contexts (masks, positions, cache)."""
    target, _, _ = testing.toy_pair()
    out = gen.generate(
        target, target, [[1, 2, 3], [0, 3]], method, key=jax.random.PRNGKey(2), max_new_tokens=12
    )
    hist = out.counters.accepted_hist
    np.testing.assert_array_equal(hist[:, :-1], 0)
    assert np.all(hist[:, -1] > 0)


class _SilentEngine(decode.Engine):
    """A broken engine whose rounds emit nothing (commit only counts the round)."""

    def commit(self, state, res, target_cache, draft_cache, *flags):
        return state._replace(round=state.round + 1)


@pytest.mark.parametrize("driver", ["while", "python"])
def test_rounds_that_emit_nothing_stop_at_the_budget_and_are_reported(driver, monkeypatch):
    """The drivers are bounded by the rounds a budget can need (one token per round at
    least), so a round emitting nothing cannot loop forever; the rows are named."""
    target, draft, _ = testing.toy_pair()
    monkeypatch.setattr(decode, "Engine", _SilentEngine)
    with pytest.raises(RuntimeError, match=r"row 0: 0 tokens in 5 rounds.*row 1"):
        gen.generate(
            target, draft, [[1, 2, 3], [0, 3]], "sd:2", key=jax.random.PRNGKey(0),
            max_new_tokens=5, driver=driver,
        )  # fmt: skip


def _nan_row_zero(apply, value=jnp.nan, where=slice(None)):
    """``apply`` whose logits for batch row 0 are ``value`` at ids ``where`` (a broken
    model, on one row; by default NaN everywhere)."""

    def broken_apply(params, tokens, positions, mask, cache):
        logits, cache = apply(params, tokens, positions, mask, cache)
        return logits.at[0, :, where].set(value), cache

    return broken_apply


NOT_A_LAW = {  # logits that define no law: (value, ids it is written at)
    "nan": (jnp.nan, slice(None)),
    "nan one id": (jnp.nan, 1),
    "+inf one id": (jnp.inf, 2),
    "all -inf": (-jnp.inf, slice(None)),
}


@pytest.mark.parametrize("method", ["ar", "sd:2", "rsd_s:2x2/tv"])
@pytest.mark.parametrize("driver", ["while", "python"])
@pytest.mark.parametrize("corruption", NOT_A_LAW)
def test_nonfinite_target_logits_stop_the_row_and_raise(method, driver, corruption):
    """No silent stream of wrong tokens: the row stops and the error names it."""
    target, draft, _ = testing.toy_pair()
    broken = target._replace(apply=_nan_row_zero(target.apply, *NOT_A_LAW[corruption]))
    with pytest.raises(gen.NonFiniteLogitsError, match=r"1 of 2 rows \(row 0 in round 1\)"):
        gen.generate(
            broken, None if method == "ar" else draft, [[1, 2, 3], [0, 3]], method,
            key=jax.random.PRNGKey(0), max_new_tokens=6, driver=driver,
        )  # fmt: skip


def test_an_error_names_a_few_rows_and_counts_the_rest():
    target, _, _ = testing.toy_pair()
    broken = target._replace(apply=_nan_all_rows(target.apply))
    with pytest.raises(gen.NonFiniteLogitsError) as e:
        gen.generate(broken, None, [[1, 2]] * 60, "ar", key=jax.random.PRNGKey(0), max_new_tokens=2)
    text = str(e.value)
    assert "in 60 of 60 rows (row 0 in round 1, row 1 in round 1" in text
    assert "row 4 in round 1 and 55 more)" in text and "row 5 " not in text


def _nan_all_rows(apply):
    def broken_apply(params, tokens, positions, mask, cache):
        logits, cache = apply(params, tokens, positions, mask, cache)
        return logits * jnp.nan, cache

    return broken_apply


def _masked_pair(seed: int):
    """Toy tables with exact zeros, which the toy model turns into ``-inf`` logits: the
    target's and the draft's supports differ (and the draft proposes ids the target
    forbids)."""
    rng = np.random.default_rng(seed)
    target = toy.random_table(rng, V, 3, alpha=0.6, zero_frac=0.4)
    draft = toy.random_table(rng, V, 3, alpha=0.6, zero_frac=0.4)
    assert (target == 0).any() and (draft == 0).any() and ((draft > 0) & (target == 0)).any()
    return toy.as_model(target), toy.as_model(draft), target


MASKED_METHODS = ["ar", "sd:3", "mrs:2x2", "spectr:2x2", "rsd_c:2-2", "rsd_s:3x2", "rsd_c:2-1-1/tv"]


@pytest.mark.parametrize("method", MASKED_METHODS)
def test_minus_inf_logits_are_probability_zero_and_the_law_is_exact(method):
    """A model that writes its zero probabilities as ``-inf`` logits (the usual vocabulary
    mask) generates, never raises, is not counted as a broken draft, and every method's
    first three tokens follow the target's law (chi-square at ALPHA, 3 x 10^4 draws)."""
    target, draft, table = _masked_pair(seed=5)
    prompt = [1, 3, 0]
    counts, out = _first_tokens_counts(method, prompt, 30_000, 2, target, draft)
    assert not out.counters.nonfinite_draft.any() and not out.counters.nonfinite_target.any()
    law = lawcheck.target_law(table, tuple(prompt), 3)
    assert (law == 0).any()  # impossible sequences exist, and must never come out
    assert counts[law == 0].sum() == 0
    assert lawcheck.chi2_pvalue(counts, law) >= lawcheck.ALPHA


def test_minus_inf_law_negative_control():
    """The same test on the same masked models rejects RSD-C verified with raw p."""
    target, draft, table = _masked_pair(seed=5)
    bad = methods.Method("RSD-C/raw-p", methods.tree_lib.branching((3, 2)), broken.RRS_RAW_P)
    prompt = [1, 3, 0]
    counts, _ = _first_tokens_counts(bad, prompt, 30_000, 2, target, draft)
    law = lawcheck.target_law(table, tuple(prompt), 3)
    assert lawcheck.chi2_pvalue(counts, law) < lawcheck.ALPHA


def test_nonfinite_draft_logits_are_counted_and_output_stays_exact():
    target, draft, _ = testing.toy_pair()
    broken = draft._replace(apply=_nan_row_zero(draft.apply))
    prompts = [[1, 2, 3], [0, 3]]
    key = jax.random.PRNGKey(0)
    ref = gen.generate(target, None, prompts, "ar", key=key, max_new_tokens=8, sampling=GREEDY)
    out = gen.generate(target, broken, prompts, "sd:2", key=key, max_new_tokens=8, sampling=GREEDY)
    assert out.tokens == ref.tokens
    c = out.counters
    assert c.nonfinite_draft[0] == c.target_calls[0] > 0 and c.nonfinite_draft[1] == 0


def test_drafted_tokens_of_recorded_probability_zero_are_rejected_and_counted(monkeypatch):
    """Fault injection: the law recorded for row 0's drafted tokens says they were
    impossible. Verification must reject them (fail closed) and count the rounds; the
    greedy output is still AR's, and the healthy row is untouched."""
    target, draft, _ = testing.toy_pair()
    prompts = [[1, 2, 3], [0, 3]]
    key = jax.random.PRNGKey(0)
    ref = gen.generate(target, None, prompts, "ar", key=key, max_new_tokens=8, sampling=GREEDY)
    honest = decode.Engine.draft

    def mislabelled(self, state, draft_params, keys):
        tree, probs, cache, ok = honest(self, state, draft_params, keys)
        parents = jnp.maximum(tree.parents[0, 1:], 0)
        return tree, probs.at[0, parents, tree.tokens[0, 1:]].set(0.0), cache, ok

    monkeypatch.setattr(decode.Engine, "draft", mislabelled)
    gen.jitted_step.cache_clear()  # steps compiled with the honest draft must not be reused
    gen._loop_fn.cache_clear()
    try:
        out = gen.generate(target, draft, prompts, "sd:2", key=key, max_new_tokens=8,
                           sampling=GREEDY)  # fmt: skip
    finally:
        gen.jitted_step.cache_clear()
        gen._loop_fn.cache_clear()
    assert out.tokens == ref.tokens
    c = out.counters
    assert c.zero_prob_draft[0] == c.target_calls[0] > 0 and c.zero_prob_draft[1] == 0
    assert c.accepted_hist[0, 1:].sum() == 0  # nothing of row 0 was accepted
    assert c.accepted_hist[1, 1:].sum() > 0


TEMPERED = transforms.SamplingParams(temperature=0.7, top_p=0.8)


@pytest.mark.parametrize("method", ["sd:3", "spectr:2x2", "rsd_c:2-2", "rsd_s:3x2/tv"])
def test_law_at_temperature_below_one_with_top_p_is_the_transformed_target_law(method):
    """T=0.7, top-p 0.8: the output law is the target's law *after* the same transforms
    (3 x 10^4 generations, chi-square at ALPHA). The expected law applies the engine's own
    transform to every row of the target table, then enumerates; a filtered-out id that
    came out would fail at once (probability 0)."""
    target, draft, table = testing.toy_pair(seed=1)
    logits = toy.safe_log_table(jnp.asarray(table, jnp.float32))
    law_table = np.asarray(
        transforms.probs_from_logits(logits, TEMPERED.temperature, 0, TEMPERED.top_p), np.float64
    )
    law_table /= law_table.sum(-1, keepdims=True)
    assert np.mean(law_table == 0) > 0.1  # top-p removes ids: the test can see them
    prompt = [1, 3, 0]
    keys = jax.random.split(jax.random.PRNGKey(4), 30_000)
    out = gen.generate(
        target, draft, [prompt] * 30_000, method, key=keys[0], keys=keys, max_new_tokens=3,
        sampling=TEMPERED,
    )  # fmt: skip
    counts = np.bincount([lawcheck.seq_code(t[:3], V) for t in out.tokens], minlength=V**3)
    law = lawcheck.target_law(law_table, tuple(prompt), 3)
    assert lawcheck.chi2_pvalue(counts, law) >= lawcheck.ALPHA
    untransformed = lawcheck.target_law(table, tuple(prompt), 3)
    assert lawcheck.chi2_pvalue(counts, untransformed) < lawcheck.ALPHA  # negative control
