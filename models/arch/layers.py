"""The blocks of the decoder (:mod:`models.arch.decoder`): norms, RoPE, attention, MLP.

Each block reads and writes its layer of the explicit KV cache (`write_rows`) and takes the
attention mask and RoPE tables its decoder computed once per call. Letters as in
:mod:`models.arch.decoder`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.arch.config import ModelConfig
from models.arch.dense import dense_for

# Finite "minus infinity": exp() of it underflows to exactly 0 in float32, and a fully
# masked attention row stays finite (uniform) instead of NaN.
MASK_VALUE = -1e30


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
        dense = dense_for(c)
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
        dense = functools.partial(dense_for(c), use_bias=c.dense_bias)
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
