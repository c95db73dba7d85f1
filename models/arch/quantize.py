"""Tiled and int8 weights (`ModelConfig.weights`): cheaper calls on a CPU.

`tile(model)` keeps a float32 model's weights and lays every matrix out in 64-column tiles
for `models.kernels.tiled_matmul`: the same model to float rounding, whose products read each weight
once for up to 6 tokens (a target scoring a draft tree). `quantize_int8(model)` also stores
the tiles as int8, for drafts:

A speculative method is lossless for *any* draft law (the verifier only needs the law each
drafted token was drawn from), so a draft may be a coarser copy of a model. On a CPU a
decoding call of a small model is bound by reading its weights, so storing them as int8
instead of float32 makes the call about twice as fast (through `models.kernels.tiled_matmul`'s
kernel, which widens int8 in registers: XLA:CPU itself would first convert the matrix to
float32 in memory); acceptance moves only by how far the coarser draft's law moves.

Scheme (symmetric, per output channel): a matrix W [.., D, F] becomes q = round(W / s) in
[-127, 127] with s [.., F] = max_d |W[d, f]| / 127 (1 where a column is all zero), stored as
`kernel` = the int8 tiles of q (`models.kernels.tiled_matmul`: [.., F / 64, D, 64], F padded to a
multiple of 64) and `kernel_scale` = s. The embedding table E [V, D] is stored the same way
as E^T (one scale per id), which serves both the token lookup and a tied output head.
Norms, biases and a learned position table stay in the model dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from models.arch import decoder
from models.kernels import tiled_matmul
from models.loaded import LoadedModel

_LEVELS = 127


def quantize_rows(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of ``w`` with one scale per slice along every axis but ``axis``.

    Returns ``(q int8, scale float32)`` with ``scale`` the shape of ``w`` without ``axis``
    and ``q * expand_dims(scale, axis)`` within ``scale / 2`` of ``w`` elementwise.
    """
    w = np.asarray(w, np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError("cannot quantize weights that are not finite")
    scale = np.max(np.abs(w), axis=axis) / _LEVELS
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.rint(w / np.expand_dims(scale, axis))
    return np.clip(q, -_LEVELS, _LEVELS).astype(np.int8), scale


def tiles_of(w, int8: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``w [.., D, F]`` float -> (int8 tiles ``[.., Fp / 64, D, 64]``, scale ``[.., Fp]``),
    or with ``int8=False`` (float32 tiles, None)."""
    if not int8:
        w = np.asarray(w, np.float32)
        pad = tiled_matmul.padded(w.shape[-1]) - w.shape[-1]
        w = np.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, pad)])
        *lead, d, width = w.shape
        tiles = w.reshape(*lead, d, width // tiled_matmul.BLOCK, tiled_matmul.BLOCK)
        return np.ascontiguousarray(np.moveaxis(tiles, -2, -3)), None
    q, scale = quantize_rows(w, axis=-2)
    pad = tiled_matmul.padded(q.shape[-1]) - q.shape[-1]
    q = np.pad(q, [(0, 0)] * (q.ndim - 1) + [(0, pad)])
    scale = np.pad(scale, [(0, 0)] * (scale.ndim - 1) + [(0, pad)], constant_values=1.0)
    *lead, d, width = q.shape
    tiles = q.reshape(*lead, d, width // tiled_matmul.BLOCK, tiled_matmul.BLOCK)
    return np.ascontiguousarray(np.moveaxis(tiles, -2, -3)), scale


def tiled_params(params, int8: bool) -> dict:
    """The params of a float decoder with every ``kernel`` (``[.., D, F]``, stacked or
    not) and the ``embed`` table stored as tiles: int8 plus float32 scales, or float32."""

    def put(out, w):
        tiles, scale = tiles_of(w, int8)
        out["kernel"] = jnp.asarray(tiles)
        if scale is not None:
            out["kernel_scale"] = jnp.asarray(scale)

    def walk(tree, name):
        if not isinstance(tree, dict):
            return tree
        out = {}
        for key, value in tree.items():
            if key == "kernel" and np.ndim(value) >= 2:
                put(out, value)
            elif name == "embed" and key == "embedding":
                put(out, np.asarray(value, np.float32).T)  # [D, V]: one column per id
            else:
                out[key] = walk(value, key)
        return out

    return walk(dict(params), "")


def quantize_int8(model: LoadedModel) -> LoadedModel:
    """``model`` with int8 weights (``ModelConfig.weights = 'int8'``); see the module doc.

    Raises:
      ValueError: the model's weights are not 'float', or its params do not have the
        layout of its config (checked against the decoder's own parameter shapes).
    """
    return convert(model, "int8")


def tile(model: LoadedModel) -> LoadedModel:
    """``model`` (float32) with its weights in float32 tiles (``weights = 'tiled'``)."""
    return convert(model, "tiled")


def convert(model: LoadedModel, weights: str) -> LoadedModel:
    """``model`` with ``ModelConfig.weights = weights`` ('float' returns it unchanged)."""
    c = model.config
    if weights == c.weights == "float":
        return model
    if c.weights != "float":
        raise ValueError(f"{c.name or 'the model'} already has {c.weights} weights")
    config = c.replace(weights=weights)  # checks the name and the dtype
    params = tiled_params(model.params, int8=weights == "int8")
    _check_layout(config, params)
    return model._replace(config=config, params=params)


def _check_layout(config, params) -> None:
    """Raises ValueError unless ``params`` has the tree, shapes and dtypes ``config``'s
    decoder declares."""
    cache = decoder.init_cache(config, 1, 2)
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask = decoder.causal_mask(cache.index, 1, 2)
    init = decoder.Decoder(config).init
    want = jax.eval_shape(lambda: init(jax.random.PRNGKey(0), tokens, tokens, mask, cache))
    want = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), want["params"])
    got = jax.tree_util.tree_map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), params)
    if want != got:
        raise ValueError(f"{config.weights} params do not match the decoder of {config.name!r}")
