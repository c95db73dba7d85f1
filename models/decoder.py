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

from models import tiled_matmul
from models.config import ModelConfig
from models.errors import PromptTooLongError
from rsd_jax import kv_cache

# Mask for prefill/decode, causal_mask(index [B], T, S) -> [B, T, S] bool: query t of row b
# sees slots s <= index[b] + t (index: the cache index *before* the write).
causal_mask = kv_cache.causal_prefix_mask

# Finite "minus infinity": exp() of it underflows to exactly 0 in float32, and a fully
# masked attention row stays finite (uniform) instead of NaN.
MASK_VALUE = -1e30


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


class RMSNorm(nn.Module):
    """Norm over the last axis, computed in float32; `kind` is a `config.NORMS` entry.

    'rms' multiplies by `scale` (init 1), 'rms_plus_one' by 1 + `scale` (init 0, Gemma),
    'layer' is LayerNorm (mean removed) with `scale` and `bias` (OPT).
    """

    eps: float
    dtype: jnp.dtype
    kind: str = "rms"

    @nn.compact
    def __call__(self, x):  # [..., D] -> [..., D]
        init = nn.initializers.zeros if self.kind == "rms_plus_one" else nn.initializers.ones
        scale = self.param("scale", init, (x.shape[-1],), self.dtype).astype(jnp.float32)
        x32 = x.astype(jnp.float32)
        if self.kind == "layer":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.kind == "rms_plus_one":
            return (x32 * (1.0 + scale)).astype(self.dtype)
        x32 = x32 * scale
        if self.kind == "layer":
            x32 = x32 + self.param("bias", nn.initializers.zeros, scale.shape, self.dtype)
        return x32.astype(self.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: tuple = ()) -> np.ndarray:
    """[E/2] float64 inverse frequencies, with HF's 'linear', 'llama3' or 'yarn' scaling.

    Args:
      head_dim: E.
      theta: the RoPE base.
      scaling: `ModelConfig.rope_scaling` pairs (() for none).
    """
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    s = dict(scaling)
    kind = s.get("rope_type", "default")
    if kind == "linear":  # positions divided by the factor
        return inv_freq / s["factor"]
    if kind == "llama3":
        # Wavelengths longer than original_max / low_freq_factor are stretched by `factor`,
        # shorter than original_max / high_freq_factor kept, and those between blended
        # linearly in original_max / wavelength.
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv_freq
        smooth = (old / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        out = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return np.where(medium, blended, out)
    if kind == "yarn":
        # Per frequency, blend the original (extrapolated) and the factor-scaled
        # (interpolated) value by a ramp over the dimensions whose number of rotations
        # within original_max lies between beta_slow and beta_fast.
        def dim_of(rotations):
            old = s["original_max_position_embeddings"]
            return head_dim * np.log(old / (rotations * 2 * np.pi)) / (2 * np.log(theta))

        low, high = dim_of(s["beta_fast"]), dim_of(s["beta_slow"])
        if s["truncate"]:
            low, high = np.floor(low), np.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        high = high + 0.001 if low == high else high
        ramp = np.clip((np.arange(head_dim // 2) - low) / (high - low), 0, 1)
        keep = 1 - ramp  # weight of the original frequency
        return inv_freq / s["factor"] * (1 - keep) + inv_freq * keep
    if kind != "default":
        raise ValueError(f"RoPE scaling {kind!r} is not supported")
    return inv_freq


def rope_angles(positions: jax.Array, head_dim: int, theta: float, scaling: tuple = ()):
    """Returns (sin, cos), each [B, T, E/2] float32, for integer positions [B, T].

    Both are multiplied by YaRN's attention_factor when `scaling` has one.
    """
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    gain = dict(scaling).get("attention_factor", 1.0)
    if gain != 1.0:
        return gain * jnp.sin(angles), gain * jnp.cos(angles)
    return jnp.sin(angles), jnp.cos(angles)


def write_positions(pos: jax.Array, slots: jax.Array, positions: jax.Array) -> jax.Array:
    """pos [1,B,S] with positions [B,T] written at slots [B,T] (out of range: dropped)."""

    def row(p, s, n):  # [S], [T], [T]
        return p.at[s].set(n.astype(p.dtype), mode="drop")

    return jax.vmap(row)(pos[0], slots, positions)[None]


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array, layout: str) -> jax.Array:
    """Rotates x [B, T, heads, E] by the angles; layout 'interleaved' or 'rotate_half'."""
    x32 = x.astype(jnp.float32)
    sin, cos = sin[:, :, None, :], cos[:, :, None, :]  # [B, T, 1, E/2]
    if layout == "interleaved":  # GPT-J: pairs (2i, 2i+1)
        x0, x1 = x32[..., 0::2], x32[..., 1::2]
        out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
        out = out.reshape(x.shape)
    else:  # rotate-half (NeoX / HF): pairs (i, i + E/2)
        half = x.shape[-1] // 2
        x0, x1 = x32[..., :half], x32[..., half:]
        out = jnp.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
    return out.astype(x.dtype)


def write_rows(cache: jax.Array, layer: int, slots: jax.Array, new: jax.Array) -> jax.Array:
    """cache [L,B,S,K,E] with new [B,T,K,E] written at `layer`, row b, slots[b] ([B,T]).

    Out-of-range slots are dropped, never clamped onto valid ones. Vmapped over the batch,
    so the scatter carries B as a batch dimension: with B split over devices, each device
    writes its own rows without communication.
    """

    def row(c, s, n):  # [L,S,K,E], [T], [T,K,E]
        return c.at[layer, s].set(n.astype(c.dtype), mode="drop")

    return jax.vmap(row, in_axes=(1, 0, 0), out_axes=1)(cache, slots, new)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, sin, cos, mask, k_all, v_all, layer, slots):
        """x [B,T,D]; mask [B,T,S]; k_all/v_all [L,B,S,K,E]; slots [B,T] write indices.

        sin/cos are None for a model without RoPE (learned positions)."""
        c = self.config
        dt = jnp.dtype(c.dtype)
        dense = _dense(c)
        b, t, _ = x.shape
        q = dense(c.heads * c.head_dim, use_bias=c.qkv_bias, name="q")(x)
        k = dense(c.kv_heads * c.head_dim, use_bias=c.qkv_bias, name="k")(x)
        v = dense(c.kv_heads * c.head_dim, use_bias=c.qkv_bias, name="v")(x)
        q = q.reshape(b, t, c.heads, c.head_dim)
        k = k.reshape(b, t, c.kv_heads, c.head_dim)
        if c.qk_norm:
            q = RMSNorm(c.rms_eps, dt, c.norm, name="q_norm")(q)
            k = RMSNorm(c.rms_eps, dt, c.norm, name="k_norm")(k)
        if sin is not None:
            q = apply_rope(q, sin, cos, c.rope_layout)
            k = apply_rope(k, sin, cos, c.rope_layout)
        v = v.reshape(b, t, c.kv_heads, c.head_dim)
        # Eager callers get PromptTooLongError before an out-of-range write.
        k_all = write_rows(k_all, layer, slots, k)
        v_all = write_rows(v_all, layer, slots, v)
        keys, values = k_all[layer].astype(dt), v_all[layer].astype(dt)  # [B, S, K, E]
        g = c.heads // c.kv_heads
        q = q.reshape(b, t, c.kv_heads, g, c.head_dim)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, keys, preferred_element_type=jnp.float32)
        scores = scores * (c.attn_scale or 1.0 / np.sqrt(c.head_dim))
        if c.attn_softcap:
            scores = c.attn_softcap * jnp.tanh(scores / c.attn_softcap)
        scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)  # [B, K, G, T, S]
        out = jnp.einsum("bkgts,bskd->btkgd", probs, values).reshape(b, t, c.heads * c.head_dim)
        return dense(c.hidden, use_bias=c.dense_bias, name="o")(out), k_all, v_all


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):  # [B, T, D] -> [B, T, D]
        c = self.config
        dt = jnp.dtype(c.dtype)
        dense = functools.partial(_dense(c), use_bias=c.dense_bias)
        up = dense(c.mlp_hidden, name="up")(x)
        if c.mlp == "relu":  # OPT: fc1 -> relu -> fc2
            return dense(c.hidden, name="down")(nn.relu(up))
        gate = dense(c.mlp_hidden, name="gate")(x)
        if c.mlp == "geglu_tanh":
            act = jax.nn.gelu(gate.astype(jnp.float32), approximate=True).astype(dt)
        else:
            act = nn.silu(gate)
        return dense(c.hidden, name="down")(act * up)


class Block(nn.Module):
    """One transformer block; `Decoder` runs them in a loop or under a scan."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, k_all, v_all, sliding, layer, ropes, masks, slots):
        """x [B,T,D]; k_all/v_all [L,B,S,K,E], written at `layer`; the rest as in Attention.

        `ropes` and `masks` are (full-attention, sliding-window) pairs of (sin, cos) and
        [B,T,S] masks; `sliding` picks one: a Python bool, or a traced bool under a scan of
        layers that differ (`config.mixed_layers`).

        Returns:
          (x after this block, (k_all, v_all)); a pair so that a scan can carry x and stack
          the caches.
        """
        c = self.config
        if not c.mixed_layers:
            sliding = c.is_sliding(0)
        if isinstance(sliding, bool):
            (sin, cos), mask = ropes[sliding], masks[sliding]
        else:
            (sin, cos), mask = jax.tree.map(
                lambda full, local: jnp.where(sliding, local, full),
                (ropes[0], masks[0]), (ropes[1], masks[1]),
            )  # fmt: skip
        norm = functools.partial(RMSNorm, c.rms_eps, jnp.dtype(c.dtype), c.norm)
        h = norm(name="attn_norm")(x) if c.pre_norm else x
        h, k_all, v_all = Attention(c, name="attn")(h, sin, cos, mask, k_all, v_all, layer, slots)
        if c.post_norms:
            h = norm(name="attn_post_norm")(h)
        x = x + h
        if not c.pre_norm:  # post-LN (OPT do_layer_norm_before=False)
            x = norm(name="attn_norm")(x)
        h = MLP(c, name="mlp")(norm(name="mlp_norm")(x) if c.pre_norm else x)
        if c.post_norms:
            h = norm(name="mlp_post_norm")(h)
        x = x + h
        if not c.pre_norm:
            x = norm(name="mlp_norm")(x)
        return x, (k_all, v_all)


# With `config.scan_layers` the blocks run under one scan, so XLA compiles a single block
# body whatever the depth. Their params are then stacked over layers: `layers/attn/q/kernel`
# is [L, D, H*E]; unrolled they are per layer, `layers_3/attn/q/kernel` (as in checkpoints
# and the converted caches; the loaders stack when asked).
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
            x = _dense(c)(c.hidden, use_bias=False, name="project_in")(x)
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
            x = _dense(c)(width, use_bias=False, name="project_out")(x)
        new_cache = KVCache(k_all, v_all, pos_all, cache.index + t)
        # The head accumulates and returns float32 whatever the model dtype: acceptance
        # ratios q/p amplify the error of 8-bit-mantissa (bfloat16) logits.
        if c.head_vocab:  # a draft scoring only the ids in its params (models.draft_vocab)
            compact = Head(c.head_vocab, dt, c.weights, name=HEAD)(x)  # [B, T, V']
            if c.final_softcap:
                compact = c.final_softcap * jnp.tanh(compact / c.final_softcap)
            ids = self.param(f"{HEAD}_ids", nn.initializers.zeros, (c.head_vocab,), jnp.int32)
            full = jnp.full(x.shape[:2] + (c.vocab_size,), MASK_VALUE, jnp.float32)
            return full.at[:, :, ids].set(compact), new_cache
        if c.tied_embeddings and c.weights != "float":
            logits = embed(attend=x)
        elif c.tied_embeddings:
            logits = _dot_f32(x, embed.embedding, "btd,vd->btv")
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


def _dot_f32(x, w, spec):
    """einsum in the operands' dtype with a float32 result (float32 accumulation)."""
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)


class Head(nn.Module):
    """Output projection `[B, T, D] -> [B, T, width]` float32 (params `kernel` [D, width],
    the layout of `nn.Dense`; tiled or int8 weights as in `TiledDense`)."""

    width: int
    dtype: jnp.dtype
    weights: str = "float"

    @nn.compact
    def __call__(self, x):
        if self.weights != "float":
            tiles, scale = _tiles(self, x.shape[-1], self.width, self.weights)
            return tiled_matmul.matmul(x.astype(jnp.float32), tiles, scale, self.width)
        init = nn.initializers.lecun_normal()
        kernel = self.param("kernel", init, (x.shape[-1], self.width), self.dtype)
        return _dot_f32(x, kernel, "btd,dv->btv")


def _dense(c: ModelConfig):
    """The projection module of `c`: `nn.Dense` in the model dtype, or `TiledDense`."""
    dt = jnp.dtype(c.dtype)
    if c.weights != "float":
        return functools.partial(TiledDense, dtype=dt, weights=c.weights)
    return functools.partial(nn.Dense, dtype=dt, param_dtype=dt)


class TiledDense(nn.Module):
    """`x @ W + b` with W [D, F] stored tiled (`models.tiled_matmul`): `kernel`
    [ceil(F / 64), D, 64], float32 (`weights='tiled'`) or int8 (`weights='int8'`, with a
    float32 `kernel_scale` [64 ceil(F / 64)], one scale per output channel); made by
    `models.quantize`. A call reads each weight once, however many tokens it scores."""

    features: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    weights: str = "int8"

    @nn.compact
    def __call__(self, x):
        tiles, scale = _tiles(self, x.shape[-1], self.features, self.weights)
        y = tiled_matmul.matmul(x.astype(jnp.float32), tiles, scale, self.features)
        y = y.astype(self.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.dtype)
        return y


def _tiles(module: nn.Module, inputs: int, features: int, weights: str):
    """Declares the `kernel` tiles (and, for int8, their `kernel_scale`; else None)."""
    width = tiled_matmul.padded(features)
    shape = (width // tiled_matmul.BLOCK, inputs, tiled_matmul.BLOCK)
    if weights == "tiled":
        return module.param("kernel", nn.initializers.zeros, shape, jnp.float32), None
    tiles = module.param("kernel", nn.initializers.zeros, shape, jnp.int8)
    scale = module.param("kernel_scale", nn.initializers.ones, (width,), jnp.float32)
    return tiles, scale


class TiledEmbed(nn.Module):
    """Token embedding E [V, D] stored as the tiles of E^T (the layout of a `TiledDense`
    head of width V, so int8 has one scale per id). A lookup gathers an id's column of its
    tile; `attend` (a tied output head) is the tiled product, so both uses read each weight
    once."""

    num: int
    features: int
    dtype: jnp.dtype
    weights: str

    @nn.compact
    def __call__(self, tokens=None, attend=None):
        """`tokens` [B, T] -> [B, T, D] embeddings, or `attend` [B, T, D] -> [B, T, V]."""
        tiles, scale = _tiles(self, self.features, self.num, self.weights)
        if attend is not None:
            return tiled_matmul.matmul(attend.astype(jnp.float32), tiles, scale, self.num)
        block = tiled_matmul.BLOCK
        rows = tiles[tokens // block, :, tokens % block].astype(jnp.float32)  # [B, T, D]
        if scale is not None:
            rows = rows * scale[tokens][..., None]
        return rows.astype(self.dtype)


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
