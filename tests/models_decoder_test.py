"""Consistency of the Flax decoder on tiny random float32 models.

Tolerance: every comparison below runs the same float32 math in a different grouping
(a T-token matmul vs T one-token matmuls, a masked softmax over more or fewer stale slots),
so results differ only by rounding: a few ulps per op through 2 layers, i.e. ~1e-6 on
logits of size ~1. ATOL = RTOL = 1e-5 leaves a 10x margin yet is far below any real bug
(a wrong RoPE position or a leaked mask entry moves logits by ~1e-2 or more).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import testing
from models.arch import decoder
from models.arch.config import ModelConfig
from models.errors import PromptTooLongError

ATOL = RTOL = 1e-5
V = 97


def tiny_config(**kw) -> ModelConfig:
    base = dict(
        arch="llama", vocab_size=V, valid_vocab_size=V, hidden=48, layers=2, heads=6,
        kv_heads=2, head_dim=8, mlp_hidden=80, rms_eps=1e-5, rope_theta=1000.0,
        rope_layout="interleaved", qkv_bias=False, tied_embeddings=True,
    )  # fmt: skip
    base.update(kw)
    return ModelConfig(**base)


CONFIGS = {
    "llama_interleaved_tied": tiny_config(),
    "qwen2_rotate_half_bias_untied": tiny_config(
        arch="qwen2",
        rope_layout="rotate_half",
        qkv_bias=True,
        tied_embeddings=False,
        valid_vocab_size=90,
    ),  # fmt: skip
    "llama_rotate_half_bias_mha": tiny_config(rope_layout="rotate_half", qkv_bias=True, kv_heads=6),
    "qwen2_interleaved_untied": tiny_config(arch="qwen2", tied_embeddings=False, kv_heads=1),
    "qwen2_rotate_half_bias_untied_scan": tiny_config(
        arch="qwen2",
        rope_layout="rotate_half",
        qkv_bias=True,
        tied_embeddings=False,
        valid_vocab_size=90,
        scan_layers=True,
    ),  # fmt: skip
}


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def model(request):
    config = CONFIGS[request.param]
    return config, decoder.init_params(config, jax.random.key(0))


FULL_T = 20  # reference runs are right-padded to one length so they compile once


def _full(config, params, tokens, capacity=None):
    """One causal forward over all tokens from an empty cache; returns [B, T, V] logits.

    The tokens are right-padded to FULL_T (causal, so padding cannot affect them).
    """
    del capacity
    b, t = tokens.shape
    padded = jnp.zeros((b, FULL_T), jnp.int32).at[:, :t].set(tokens)
    cache = decoder.init_cache(config, b, FULL_T)
    positions = jnp.broadcast_to(jnp.arange(FULL_T, dtype=jnp.int32), (b, FULL_T))
    mask = decoder.causal_mask(cache.index, FULL_T, FULL_T)
    logits, cache = decoder.forward(config, params, padded, positions, mask, cache)
    return logits[:, :t], cache._replace(index=cache.index - FULL_T + t)


def test_shapes_and_cache_index(model):
    config, params = model
    tokens = jnp.ones((2, 5), jnp.int32)
    logits, cache = _full(config, params, tokens)
    chex.assert_shape(logits, (2, 5, V))
    chex.assert_shape(cache.k, (config.layers, 2, FULL_T, config.kv_heads, config.head_dim))
    assert logits.dtype == jnp.float32
    np.testing.assert_array_equal(cache.index, [5, 5])


def test_cached_decode_equals_full_forward(model):
    config, params = model
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, config.valid_vocab_size)
    full, _ = _full(config, params, tokens, 12)
    # Prefill 4 tokens, then decode one at a time with mask `slot < length`.
    cache = decoder.init_cache(config, 2, 12)
    logits, cache = decoder.prefill(config, params, tokens[:, :4], jnp.array([4, 4]), cache)
    chex.assert_trees_all_close(logits, full[:, 3], atol=ATOL, rtol=RTOL)
    for t in range(4, 9):
        positions = jnp.full((2, 1), t, jnp.int32)
        mask = decoder.causal_mask(cache.index, 1, 12)
        step, cache = decoder.forward(config, params, tokens[:, t : t + 1], positions, mask, cache)
        chex.assert_trees_all_close(step[:, 0], full[:, t], atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(cache.index, [9, 9])


def test_ragged_batch_rows_are_independent(model):
    """Rows with different lengths (different cache index) match their own unbatched runs."""
    config, params = model
    tokens = jax.random.randint(jax.random.key(2), (2, 7), 0, config.valid_vocab_size)
    lengths = jnp.array([3, 6])
    cache = decoder.init_cache(config, 2, 10)
    last, cache = decoder.prefill(config, params, tokens, lengths, cache)
    np.testing.assert_array_equal(cache.index, [3, 6])
    nxt = jnp.array([[5], [7]], jnp.int32)
    step, _ = decoder.forward(
        config, params, nxt, lengths[:, None], decoder.causal_mask(cache.index, 1, 10), cache
    )
    for b in range(2):
        n = int(lengths[b])
        seq = jnp.concatenate([tokens[b : b + 1, :n], nxt[b : b + 1]], axis=1)
        ref, _ = _full(config, params, seq, 10)
        chex.assert_trees_all_close(last[b], ref[0, n - 1], atol=ATOL, rtol=RTOL)
        chex.assert_trees_all_close(step[b, 0], ref[0, n], atol=ATOL, rtol=RTOL)


# A draft tree after a prefix: parent index per node (-1 = child of the last prefix token).
PARENTS = [-1, -1, 0, 0, 1, 2, 2, 4, 5, -1]


def _ancestors(parents):
    mask = np.zeros((len(parents), len(parents)), bool)
    depth = np.zeros(len(parents), np.int32)
    for i in range(len(parents)):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
        depth[i] = mask[i].sum() - 1
    return mask, depth


def test_tree_forward_equals_each_branch(model):
    config, params = model
    n, prefix, capacity = len(PARENTS), 5, 20
    key_p, key_t = jax.random.split(jax.random.key(3))
    prompt = jax.random.randint(key_p, (1, prefix), 0, config.valid_vocab_size)
    nodes = jax.random.randint(key_t, (1, n), 0, config.valid_vocab_size)
    anc, depth = _ancestors(PARENTS)
    cache = decoder.init_cache(config, 1, capacity)
    _, cache = decoder.prefill(config, params, prompt, jnp.array([prefix]), cache)
    # Tree call: node i sees the prefix slots plus the slots of its ancestors and itself.
    mask = np.zeros((1, n, capacity), bool)
    mask[0, :, :prefix] = True
    mask[0, :, prefix : prefix + n] = anc
    positions = jnp.asarray(prefix + depth)[None]
    tree_logits, tree_cache = decoder.forward(
        config, params, nodes, positions, jnp.asarray(mask), cache
    )
    np.testing.assert_array_equal(tree_cache.index, [prefix + n])
    for i in range(n):
        path = [j for j in range(n) if anc[i, j]]  # ancestors come before descendants
        seq = jnp.concatenate([prompt, nodes[:, path]], axis=1)
        ref, _ = _full(config, params, seq, capacity)
        chex.assert_trees_all_close(tree_logits[0, i], ref[0, -1], atol=ATOL, rtol=RTOL)


def test_interleaved_layout_equals_rotate_half_on_permuted_rows():
    """llama.cpp permutes HF Q/K rows; interleaved RoPE on permuted weights == rotate-half."""
    config = tiny_config(rope_layout="rotate_half", qkv_bias=True)
    params = decoder.init_params(config, jax.random.key(4))

    def permute(w, heads):  # w: kernel [D, heads*E] (columns = HF rows)
        d = w.shape[-1] // heads
        w = w.reshape(w.shape[:-1] + (heads, 2, d // 2))
        return jnp.swapaxes(w, -1, -2).reshape(w.shape[:-3] + (heads * d,))

    permuted = jax.tree.map(lambda x: x, params)
    for i in range(config.layers):
        attn = permuted[f"layers_{i}"]["attn"]
        for name, heads in (("q", config.heads), ("k", config.kv_heads)):
            attn[name] = {k: permute(v, heads) for k, v in attn[name].items()}
    tokens = jax.random.randint(jax.random.key(5), (2, 6), 0, V)
    ref, _ = _full(config, params, tokens, 6)
    out, _ = _full(config.replace(rope_layout="interleaved"), permuted, tokens, 6)
    chex.assert_trees_all_close(out, ref, atol=ATOL, rtol=RTOL)
    wrong, _ = _full(config, permuted, tokens, 6)
    assert np.abs(np.asarray(wrong - ref)).max() > 100 * ATOL


def test_padding_ids_get_zero_probability():
    config = CONFIGS["qwen2_rotate_half_bias_untied"]
    params = decoder.init_params(config, jax.random.key(6))
    logits, _ = _full(config, params, jnp.ones((1, 3), jnp.int32), 4)
    probs = jax.nn.softmax(logits, axis=-1)
    assert float(jnp.max(probs[..., config.valid_vocab_size :])) == 0.0
    assert float(jnp.min(probs[..., : config.valid_vocab_size])) > 0.0


def test_fully_masked_row_is_finite(model):
    config, params = model
    cache = decoder.init_cache(config, 1, 4)
    mask = jnp.zeros((1, 2, 4), bool)
    logits, _ = decoder.forward(
        config, params, jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32), mask, cache
    )
    assert bool(jnp.all(jnp.isfinite(logits[..., : config.valid_vocab_size])))


def test_prompt_longer_than_cache_raises():
    config = tiny_config()
    params = decoder.init_params(config, jax.random.key(7))
    fwd = decoder.make_forward(config)
    cache = decoder.init_cache(config, 1, 4)
    tokens = jnp.ones((1, 5), jnp.int32)
    with pytest.raises(PromptTooLongError, match="capacity 4"):
        fwd(params, tokens, tokens, jnp.ones((1, 5, 4), bool), cache)
    with pytest.raises(PromptTooLongError, match="capacity 4"):
        decoder.prefill(config, params, tokens, jnp.array([5]), cache)
    cache = cache._replace(index=jnp.array([3], jnp.int32))
    with pytest.raises(PromptTooLongError, match="needs 5 slots"):
        fwd(params, tokens[:, :2], tokens[:, :2], jnp.ones((1, 2, 4), bool), cache)
    with pytest.raises(PromptTooLongError, match="needs 5 slots"):
        decoder.forward(
            config, params, tokens[:, :2], tokens[:, :2], jnp.ones((1, 2, 4), bool), cache
        )


def test_make_forward_matches_jitted_forward_and_bfloat16_runs():
    config = tiny_config()
    params = decoder.init_params(config, jax.random.key(8))
    tokens = jax.random.randint(jax.random.key(9), (1, 6), 0, V)
    ref, _ = _full(config, params, tokens, 6)
    cache = decoder.init_cache(config, 1, 6)
    pos = jnp.arange(6, dtype=jnp.int32)[None]
    out, _ = jax.jit(decoder.make_forward(config))(
        params, tokens, pos, decoder.causal_mask(cache.index, 6, 6), cache
    )
    chex.assert_trees_all_close(out, ref, atol=ATOL, rtol=RTOL)
    bf16 = config.replace(dtype="bfloat16")
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out16, cache16 = _full(bf16, params16, tokens, 6)
    assert out16.dtype == jnp.float32 and cache16.k.dtype == jnp.bfloat16
    # bfloat16 has an 8-bit mantissa (~4e-3 relative); logits of size ~1 stay within 0.1.
    chex.assert_trees_all_close(out16, ref, atol=0.1)
    # The head accumulates in float32 and keeps its float32 result: logits are not
    # bfloat16 values widened (most would be unchanged by a round trip through bfloat16).
    logits = np.asarray(out16)
    widened = np.asarray(jnp.asarray(logits).astype(jnp.bfloat16).astype(jnp.float32))
    assert np.mean(logits != widened) > 0.9


def test_decode_steps_do_not_recompile():
    """Index, positions and mask are arrays, so successive steps reuse one compilation."""
    config = tiny_config()
    params = decoder.init_params(config, jax.random.key(10))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, token, cache):
        mask = decoder.causal_mask(cache.index, 1, cache.capacity)
        return decoder.make_forward(config)(params, token, cache.index[:, None], mask, cache)

    cache = decoder.init_cache(config, 2, 8)
    for t in range(5):
        _, cache = step(params, jnp.full((2, 1), t, jnp.int32), cache)
    np.testing.assert_array_equal(cache.index, [5, 5])


@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if not c.scan_layers])
def test_scanned_layers_equal_the_loop(name):
    """The same weights stacked for `scan_layers` give the loop's logits and caches exactly:
    the scan body is the same block on the same values (a prefill, then one decode step)."""
    config = CONFIGS[name]
    params = decoder.init_params(config, jax.random.key(11))
    scan_config, scan_params = testing.scanned(config, params)
    layers, c = scan_params[decoder.LAYERS], config
    chex.assert_shape(layers["attn"]["q"]["kernel"], (c.layers, c.hidden, c.heads * c.head_dim))
    chex.assert_shape(layers["mlp_norm"]["scale"], (c.layers, c.hidden))
    tokens = jax.random.randint(jax.random.key(12), (2, 6), 0, config.valid_vocab_size)
    outs = []
    for cfg, p in ((config, params), (scan_config, scan_params)):
        cache = decoder.init_cache(cfg, 2, 8)
        last, cache = decoder.prefill(cfg, p, tokens[:, :5], jnp.array([5, 3]), cache)
        mask = decoder.causal_mask(cache.index, 1, 8)
        step, cache = decoder.forward(cfg, p, tokens[:, 5:], cache.index[:, None], mask, cache)
        outs.append((last, step, cache))
    chex.assert_trees_all_equal(outs[0], outs[1])


def _dot_count(layers: int, scan: bool) -> int:
    """Matmuls in the lowered program of one forward (abstract params: nothing runs)."""
    config = tiny_config(layers=layers, scan_layers=scan)
    params = jax.eval_shape(lambda: decoder.init_params(config, jax.random.key(0)))
    cache = decoder.init_cache(config, 1, 8)
    tokens = jnp.zeros((1, 2), jnp.int32)
    mask = decoder.causal_mask(cache.index, 2, 8)
    lowered = jax.jit(decoder.make_forward(config)).lower(params, tokens, tokens, mask, cache)
    return lowered.as_text().count("dot_general")


def test_scan_compiles_one_block_whatever_the_depth():
    """With scan_layers the program holds one block body (q, k, v, o, gate, up, down and two
    attention einsums: 9 matmuls) at any depth; the loop holds one block per layer."""
    assert _dot_count(2, scan=True) == _dot_count(5, scan=True)
    assert _dot_count(5, scan=False) - _dot_count(2, scan=False) == 3 * 9
