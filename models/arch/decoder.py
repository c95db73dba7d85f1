"""A Flax (linen) decoder (llama and its declared variants) with an explicit KV cache.

One forward signature serves every phase (prefill, one-token decode, tree scoring):

    forward(params, tokens[B,T], positions[B,T], attention_mask[B,T,S], cache)
        -> (logits[B,T,V] float32, cache)

The T new keys/values of row b are written at cache slots index[b] .. index[b]+T-1 and
index advances by T. `attention_mask[b, t, s]` says whether query t of row b may attend
slot s *after* the write. Prefill is a causal mask over the written slots, decode is
`slots < length`, and a draft tree is the prefix slots plus the node's ancestors and itself,
with positions = prefix length + depth. The cache also keeps the position of every slot, so
that sliding-window layers (`config.sliding_window`) can limit attention by token
distance, which in a tree differs from slot distance. The blocks run in an unrolled loop or, with
`config.scan_layers`, under one scan over params stacked by layer (see `LAYERS`).
Letters: B batch, T new tokens, S cache capacity, D model width, H query heads, K kv heads,
G = H // K, E head dim, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.arch.config import ModelConfig
from models.arch.dense import Head, TiledEmbed, dense_for, dot_f32
from models.arch.layers import MASK_VALUE, Block, RMSNorm, rope_angles, write_positions
from models.errors import PromptTooLongError
from rsd_jax import kv_cache

# Mask for prefill/decode, causal_mask(index [B], T, S) -> [B, T, S] bool: query t of row b
# sees slots s <= index[b] + t (index: the cache index *before* the write).
causal_mask = kv_cache.causal_prefix_mask


class KVCache(NamedTuple):
    """Explicit KV cache pytree.

    Attributes:
      k: [layers, B, S, K, E] keys (RoPE applied).
      v: [layers, B, S, K, E] values.
      pos: [1, B, S] int32, the token position written at each slot (one layer: the cache
        protocol of `rsd_jax.interface` lays every field out [L, B, S, ...], so the engine
        moves it with the keys). Read by sliding-window layers only; 4 bytes per slot.
      index: [B] int32, next write slot of each row.

    Size the capacity for the longest prompt plus generation plus one draft tree: inside
    jit an overflowing write cannot raise and is dropped (`check_capacity` raises eagerly).
    """

    k: jax.Array
    v: jax.Array
    pos: jax.Array
    index: jax.Array

    @property
    def capacity(self) -> int:
        return self.k.shape[2]


def init_cache(config: ModelConfig, batch: int, capacity: int, dtype=None) -> KVCache:
    """Returns an empty cache with `capacity` slots per row (dtype defaults to config.dtype)."""
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (config.layers, batch, capacity, config.kv_heads, config.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        pos=jnp.zeros((1, batch, capacity), jnp.int32),
        index=jnp.zeros((batch,), jnp.int32),
    )


def check_capacity(cache: KVCache, num_new: int) -> None:
    """Raises PromptTooLongError if writing `num_new` tokens would overflow a row.

    Works on concrete caches only (skipped under jit, where the scatter drops the overflow).
    """
    capacity = cache.capacity
    if num_new > capacity:
        raise PromptTooLongError(f"{num_new} new tokens exceed the cache capacity {capacity}")
    if isinstance(cache.index, jax.core.Tracer):
        return
    end = int(np.max(np.asarray(cache.index))) + num_new
    if end > capacity:
        raise PromptTooLongError(
            f"writing {num_new} tokens at cache index {end - num_new} needs {end} slots, "
            f"but the cache holds {capacity}; use a larger capacity or a shorter prompt"
        )


LAYERS = "layers"
_ScannedBlocks = nn.scan(
    Block,
    variable_axes={"params": 0},
    split_rngs={"params": True},
    in_axes=(0, 0, 0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
)


class Decoder(nn.Module):
    """The full decoder; call it through `make_forward`/`forward` rather than directly."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens, positions, attention_mask, cache: KVCache):
        c = self.config
        dt = jnp.dtype(c.dtype)
        t = tokens.shape[1]
        width = c.embed_dim or c.hidden
        if c.weights != "float":
            embed = TiledEmbed(c.vocab_size, width, dt, c.weights, name="embed")
        else:
            embed = nn.Embed(c.vocab_size, width, dtype=dt, param_dtype=dt, name="embed")
        x = embed(tokens)  # [B, T, D] (or [B, T, embed_dim])
        if c.embed_scale:  # sqrt(D) rounded to the model dtype first, as transformers does
            x = x * jnp.asarray(np.sqrt(c.hidden), dt)
        if c.embed_dim:
            x = dense_for(c)(c.hidden, use_bias=False, name="project_in")(x)
        slots = cache.index[:, None] + jnp.arange(t)[None, :]  # [B, T]
        pos_all = write_positions(cache.pos, slots, positions)  # [1, B, S]
        if c.learned_positions:  # OPT: position p reads row p + 2; no RoPE
            table = nn.Embed(
                c.learned_positions, c.hidden, dtype=dt, param_dtype=dt, name="pos_embed"
            )
            x = x + table(positions + 2)
            ropes = ((None, None), (None, None))
        else:
            full = rope_angles(positions, c.head_dim, c.rope_theta, c.rope_scaling)
            local = full
            if c.rope_local_theta:
                local = rope_angles(positions, c.head_dim, c.rope_local_theta)
            ropes = (full, local)
        masks = (attention_mask, attention_mask)
        if c.sliding_window:  # by token distance: tree slots are not in position order
            near = positions[:, :, None] - pos_all[0][:, None, :] < c.sliding_window
            masks = (attention_mask, attention_mask & near)
        k_all, v_all = cache.k, cache.v
        if c.scan_layers:
            # Each step gets its layer's slice as a one-layer cache [1, B, S, K, E] (layer 0)
            # and the scan stacks the written slices back.
            sliding = jnp.asarray([c.is_sliding(i) for i in range(c.layers)])
            x, (k_all, v_all) = _ScannedBlocks(c, name=LAYERS)(
                x, k_all[:, None], v_all[:, None], sliding, 0, ropes, masks, slots
            )
            k_all, v_all = k_all[:, 0], v_all[:, 0]
        else:
            for i in range(c.layers):
                x, (k_all, v_all) = Block(c, name=f"{LAYERS}_{i}")(
                    x, k_all, v_all, c.is_sliding(i), i, ropes, masks, slots
                )
        if c.pre_norm:
            x = RMSNorm(c.rms_eps, dt, c.norm, name="final_norm")(x)
        if c.embed_dim:
            x = dense_for(c)(width, use_bias=False, name="project_out")(x)
        new_cache = KVCache(k_all, v_all, pos_all, cache.index + t)
        # The head accumulates and returns float32 whatever the model dtype: acceptance
        # ratios q/p amplify the error of 8-bit-mantissa (bfloat16) logits.
        if c.head_vocab:  # a draft scoring only the ids in its params (models.arch.head)
            compact = Head(c.head_vocab, dt, c.weights, name=HEAD)(x)  # [B, T, V']
            if c.final_softcap:
                compact = c.final_softcap * jnp.tanh(compact / c.final_softcap)
            ids = self.param(f"{HEAD}_ids", nn.initializers.zeros, (c.head_vocab,), jnp.int32)
            full = jnp.full(x.shape[:2] + (c.vocab_size,), MASK_VALUE, jnp.float32)
            return full.at[:, :, ids].set(compact), new_cache
        if c.tied_embeddings and c.weights != "float":
            logits = embed(attend=x)
        elif c.tied_embeddings:
            logits = dot_f32(x, embed.embedding, "btd,vd->btv")
        else:
            logits = Head(c.vocab_size, dt, c.weights, name="lm_head")(x)  # [B, T, V]
        if c.final_softcap:
            logits = c.final_softcap * jnp.tanh(logits / c.final_softcap)
        if c.valid_vocab_size < c.vocab_size:
            valid = jnp.arange(c.vocab_size) < c.valid_vocab_size
            logits = jnp.where(valid, logits, MASK_VALUE)
        return logits, new_cache


# The restricted output head of a draft (`ModelConfig.head_vocab`): params `draft_head/kernel`
# [D, V'] and `draft_head_ids` [V'] int32, the id each column scores.
HEAD = "draft_head"


@functools.cache
def make_forward(config: ModelConfig):
    """Returns the pure function `(params, tokens, positions, attention_mask, cache) -> (logits,
    cache)` for `config` (see the module docstring). It is not jitted; jit it (optionally
    donating the cache) in the caller. Called eagerly it raises PromptTooLongError on overflow.
    Memoised per config: the same config always gives the same function object (one jit
    cache entry in callers that key on it).
    """
    module = Decoder(config)

    def fwd(params, tokens, positions, attention_mask, cache):
        check_capacity(cache, tokens.shape[1])
        return module.apply({"params": params}, tokens, positions, attention_mask, cache)

    return fwd


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(config, params, tokens, positions, attention_mask, cache):
    return Decoder(config).apply({"params": params}, tokens, positions, attention_mask, cache)


def forward(config: ModelConfig, params, tokens, positions, attention_mask, cache):
    """Jitted forward with `config` static; see `make_forward` for the arguments.

    Called with concrete arrays it first checks the cache capacity (PromptTooLongError);
    under an outer jit the check is skipped and overflowing writes are dropped.

    Args:
      config: the ModelConfig (static).
      params: parameter pytree (as produced by the loaders or `init_params`).
      tokens: [B, T] int32.
      positions: [B, T] int32 RoPE positions.
      attention_mask: [B, T, S] bool, over cache slots after the write.
      cache: KVCache with capacity S.

    Returns:
      (logits [B, T, V] float32, cache with the tokens written and index += T).
    """
    check_capacity(cache, tokens.shape[1])
    return _forward_jit(config, params, tokens, positions, attention_mask, cache)


def init_params(config: ModelConfig, key: jax.Array, noise: float = 0.1):
    """Random parameters for tests: Flax defaults, with norms and biases perturbed by `noise`.

    Returns:
      The params pytree (dtype config.dtype).
    """
    cache = init_cache(config, 1, 2)
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask = causal_mask(cache.index, 1, 2)
    init_key, noise_key = jax.random.split(key)
    params = Decoder(config).init(init_key, tokens, tokens, mask, cache)["params"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(noise_key, len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys, strict=True):
        name = jax.tree_util.keystr(path)
        if "scale" in name or "bias" in name:
            leaf = leaf + noise * jax.random.normal(k, leaf.shape, leaf.dtype)
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def prefill(config: ModelConfig, params, tokens, lengths, cache: KVCache):
    """Writes right-padded prompts into `cache` and returns the logits after each prompt.

    Args:
      config: the ModelConfig.
      params: parameters.
      tokens: [B, T] int32 prompts, right-padded; row b is valid for t < lengths[b].
      lengths: [B] int32 prompt lengths (>= 1).
      cache: KVCache; rows start at their current index.

    Returns:
      (last_logits [B, V] float32 at position lengths[b]-1, cache with index = old + lengths).
      Padding slots are written but lie beyond the index, so later writes overwrite them.
    """
    apply = functools.partial(forward, config)  # checks the capacity when called eagerly
    logits, cache = kv_cache.prefill(apply, params, tokens, cache, lengths)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return last, cache
