"""Restricted draft vocabularies (`models.arch.head`): the head, and exactness end to end."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import adapter, drafts, testing
from models.arch import decoder
from models.arch import head as head_lib
from models.loaded import LoadedModel
from rsd_jax import generation as gen
from tests import lawcheck


def _loaded(arch, seed, **kw):
    cfg = testing.tiny_config(arch, **kw)
    return LoadedModel(cfg, decoder.init_params(cfg, jax.random.PRNGKey(seed), noise=0.3), None)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # tied / separate head
def test_restricted_head_scores_kept_ids_exactly_and_nothing_else(arch):
    full = _loaded(arch, 0)
    keep = [3, 40, 7, 200, 41]
    small = head_lib.restrict_head(full, keep)
    specials = {full.config.bos_id, full.config.eos_id, full.config.pad_id}
    kept = np.array(sorted(set(keep) | specials))
    np.testing.assert_array_equal(small.params[f"{decoder.HEAD}_ids"], kept)
    assert small.config.head_vocab == len(kept)
    tokens = jnp.array([[5, 17, 99, 3, 250]], jnp.int32)
    lengths = jnp.array([5])
    outs = []
    for m in (full, small):
        cache = decoder.init_cache(m.config, 1, 8)
        outs.append(decoder.prefill(m.config, m.params, tokens, lengths, cache)[0])
    ref, got = (np.asarray(o) for o in outs)
    np.testing.assert_allclose(got[:, kept], ref[:, kept], rtol=1e-5, atol=1e-5)
    dropped = np.setdiff1d(np.arange(full.config.vocab_size), kept)
    np.testing.assert_array_equal(got[:, dropped], np.float32(decoder.MASK_VALUE))
    assert "lm_head" not in small.params and decoder.HEAD in small.params
    assert small.params[decoder.HEAD]["kernel"].shape == (full.config.hidden, len(kept))


def test_frequent_ids_and_counts():
    counts = np.array([5, 0, 9, 9, 1, 7])
    np.testing.assert_array_equal(drafts.frequent_ids(counts, 3), [2, 3, 5])
    np.testing.assert_array_equal(drafts.frequent_ids(counts, 4), [0, 2, 3, 5])

    class Chars:  # a tokenizer whose ids are character codes
        def encode(self, text):
            return [ord(ch) for ch in text]

    counts = drafts.count_ids(Chars(), ["aab", "b\x7f"], 100)  # 127 is out of range
    assert counts[ord("a")] == 2 and counts[ord("b")] == 2 and counts.sum() == 4


def test_restrict_head_rejects_bad_ids():
    full = _loaded("qwen2", 0)
    with pytest.raises(ValueError, match="draft vocabulary"):
        head_lib.restrict_head(full, [])
    with pytest.raises(ValueError, match="draft vocabulary"):
        head_lib.restrict_head(full, [full.config.valid_vocab_size])
    with pytest.raises(ValueError, match="already"):
        head_lib.restrict_head(head_lib.restrict_head(full, [4]), [4])
    with pytest.raises(ValueError, match="draft vocabulary"):
        drafts.frequent_ids(np.ones(5), 6)


# Exactness: a 6-id model pair whose draft scores only ids 0..2 (and EOS 2 is among them),
# so ids 3..5 are never drafted; the target must still produce them at its own rates.
V, PROMPT, N = 6, [1, 4, 0], 3


def _tiny_pair():
    kw = dict(vocab_size=V, valid_vocab_size=V, bos_id=-1, eos_id=-1, pad_id=-1)
    target, draft = _loaded("qwen2", 1, **kw), _loaded("qwen2", 2, **kw)
    small = head_lib.restrict_head(draft, [0, 1, 2])
    assert small.params[f"{decoder.HEAD}_ids"].tolist() == [0, 1, 2]
    return target, small


def _exact_law(model: LoadedModel) -> np.ndarray:
    """[V**N] law of N tokens sampled at T=1 after PROMPT, by enumerating every sequence."""
    seqs = np.array(list(itertools.product(range(V), repeat=N - 1)), np.int32)
    tokens = np.concatenate([np.tile(PROMPT, (len(seqs), 1)), seqs], axis=1)
    cfg = model.config
    cache = decoder.init_cache(cfg, len(seqs), tokens.shape[1])
    mask = decoder.causal_mask(cache.index, tokens.shape[1], tokens.shape[1])
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, _ = decoder.forward(cfg, model.params, jnp.asarray(tokens), pos, mask, cache)
    probs = np.asarray(jax.nn.softmax(logits[:, len(PROMPT) - 1 :], axis=-1), np.float64)
    law = np.zeros(V**N)
    for i, seq in enumerate(seqs):
        p_prefix = probs[i, 0, seq[0]] * (probs[i, 1, seq[1]] if N > 2 else 1.0)
        for y in range(V):
            law[lawcheck.seq_code([*seq, y], V)] = p_prefix * probs[i, N - 1, y]
    return law


def _counts(method, target, draft, n=20_000):
    keys = jax.random.split(jax.random.PRNGKey(11), n)
    t, d = adapter.to_rsd_model(target), adapter.to_rsd_model(draft) if draft else None
    out = gen.generate(t, d, [PROMPT] * n, method, key=keys[0], keys=keys, max_new_tokens=N)
    codes = [lawcheck.seq_code(x[:N], V) for x in out.tokens]
    return np.bincount(codes, minlength=V**N)


@pytest.mark.parametrize("method", ["sd:3", "spectr:2x2", "rsd_c:2-2", "rsd_s:3x2/tv"])
def test_every_method_stays_lossless_with_a_restricted_draft(method):
    target, small = _tiny_pair()
    law = _exact_law(target)
    assert law[[lawcheck.seq_code(s, V) for s in itertools.product(range(3, V), repeat=N)]].sum()
    counts = _counts(method, target, small)
    assert lawcheck.chi2_pvalue(counts, law) >= lawcheck.ALPHA


def test_restricted_law_differs_from_the_target_law():
    """Negative control: sampling from the restricted model itself fails the same test."""
    target, small = _tiny_pair()
    counts = _counts("ar", small, None)
    assert lawcheck.chi2_pvalue(counts, _exact_law(target)) < lawcheck.ALPHA
