"""How a decoder's matrices are stored and multiplied: XLA's float products or the tiles
of the CPU kernel (:mod:`models.kernels.tiled_matmul`), float32 or int8.

`dense_for(config)` is the projection module of a config; `Head` the output projection;
`TiledEmbed` the token embedding in tiles (also the tied head). Tiled params are made from
float ones by :mod:`models.arch.quantize`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from models.arch.config import ModelConfig
from models.kernels import tiled_matmul


def dot_f32(x, w, spec):
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
        return dot_f32(x, kernel, "btd,dv->btv")


def dense_for(c: ModelConfig):
    """The projection module of `c`: `nn.Dense` in the model dtype, or `TiledDense`."""
    dt = jnp.dtype(c.dtype)
    if c.weights != "float":
        return functools.partial(TiledDense, dtype=dt, weights=c.weights)
    return functools.partial(nn.Dense, dtype=dt, param_dtype=dt)


class TiledDense(nn.Module):
    """`x @ W + b` with W [D, F] stored tiled (`models.kernels.tiled_matmul`): `kernel`
    [ceil(F / 64), D, 64], float32 (`weights='tiled'`) or int8 (`weights='int8'`, with a
    float32 `kernel_scale` [64 ceil(F / 64)], one scale per output channel); made by
    `models.arch.quantize`. A call reads each weight once, however many tokens it scores."""

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
