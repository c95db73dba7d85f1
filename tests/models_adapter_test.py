"""End to end: the Flax decoder as draft and target of rsd_jax's generation (tiny models)."""

from __future__ import annotations

import jax
import pytest

from models import adapter, testing
from models.arch import decoder
from models.loaded import LoadedModel
from rsd_jax import generate, transforms


def _model(key, **kw):
    config = testing.tiny_config("qwen2", valid_vocab_size=250, **kw)
    return LoadedModel(config, decoder.init_params(config, jax.random.key(key)), None)


def test_greedy_speculative_equals_autoregressive():
    """At temperature 0 every lossless method must reproduce greedy decoding exactly."""
    target = adapter.to_rsd_model(_model(0))
    draft = adapter.to_rsd_model(_model(1, layers=1))
    assert target.apply is adapter.to_rsd_model(_model(0)).apply  # one jit entry per config
    prompts = [[3, 40, 41, 42], [5, 6]]
    greedy = transforms.SamplingParams(temperature=0.0)
    kw = dict(key=jax.random.key(0), max_new_tokens=12, sampling=greedy, valid_vocab_size=250)
    ar = generate(target, None, prompts, "ar", **kw)
    for method in ("sd:3", "rsd_s:2x2"):
        out = generate(target, draft, prompts, method, **kw)
        assert out.tokens == ar.tokens, method
    assert all(len(t) == 12 and max(t) < 250 for t in ar.tokens)


def test_a_draft_padded_differently_fits_the_targets_width():
    """A pair differing only in padding rows (check_compatible accepts it) generates: the
    draft's logits are cut or padded with probability-0 ids to the target's width, and
    greedy speculative decoding still equals AR."""
    target = adapter.to_rsd_model(_model(0))  # 265 rows, 250 valid
    greedy = transforms.SamplingParams(temperature=0.0)
    kw = dict(key=jax.random.key(0), max_new_tokens=10, sampling=greedy, valid_vocab_size=250)
    prompts = [[3, 40, 41, 42], [5, 6]]
    ar = generate(target, None, prompts, "ar", **kw)
    for rows in (256, 300):  # fewer and more padding rows than the target
        loaded = _model(1, layers=1, vocab_size=rows)
        draft = adapter.to_rsd_model(loaded, vocab_size=target.vocab_size)
        assert draft.vocab_size == target.vocab_size
        for method in ("sd:3", "rsd_c:2-2"):
            out = generate(target, draft, prompts, method, **kw)
            assert out.tokens == ar.tokens, (rows, method)
    with pytest.raises(ValueError, match="valid"):
        adapter.to_rsd_model(_model(1), vocab_size=200)
