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


@jax.jit
def _float_tiles(w: jax.Array) -> jax.Array:
    """The float32 tiles of ``w`` on the device (padding and a transpose: no arithmetic,
    so bit for bit :func:`tiles_of`'s)."""
    w = w.astype(jnp.float32)
    *lead, d, features = w.shape
    width = tiled_matmul.padded(features)
    w = jnp.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, width - features)])
    tiles = w.reshape(*lead, d, width // tiled_matmul.BLOCK, tiled_matmul.BLOCK)
    return jnp.moveaxis(tiles, -2, -3)


_COLUMNS = 1024  # int8 is computed on the host this many columns at a time


def device_tiles(w, int8: bool = True) -> tuple[jax.Array, jax.Array | None]:
    """:func:`tiles_of` as device arrays, bit for bit, without a second full-size float
    copy of the matrix: float32 tiles are laid out on the device; int8 is computed on the
    host a few columns at a time (numpy's arithmetic, as :func:`quantize_rows`), so the
    full-size buffers are the original and a quarter-size int8 copy.

    Raises:
      ValueError: for int8, weights that are not all finite.
    """
    if not int8:
        return _float_tiles(jnp.asarray(w)), None
    w = np.asarray(w)
    *lead, d, features = w.shape
    width = tiled_matmul.padded(features)
    q = np.zeros((*lead, d, width), np.int8)
    scale = np.ones((*lead, width), np.float32)
    for start in range(0, features, _COLUMNS):
        cols = slice(start, min(start + _COLUMNS, features))
        q[..., cols], scale[..., cols] = quantize_rows(w[..., cols], axis=-2)
    tiles = q.reshape(*lead, d, width // tiled_matmul.BLOCK, tiled_matmul.BLOCK)
    return jnp.asarray(np.ascontiguousarray(np.moveaxis(tiles, -2, -3))), jnp.asarray(scale)


def tiled_leaf(name: str, w, dtype, int8: bool) -> dict:
    """One flat checkpoint param in the tiled layout: ``'.../kernel'`` (``[.., D, F]``)
    becomes its tiles (plus ``'.../kernel_scale'`` for int8), ``'embed/embedding'``
    ``[V, D]`` becomes ``'embed/kernel'`` (``E^T``'s tiles, one column per id), anything
    else is kept in ``dtype``. Lets a loader convert tensor by tensor
    (:func:`models.loading.load_model` with ``weights=``)."""
    parent, _, key = name.rpartition("/")
    if key == "kernel" and np.ndim(w) >= 2:
        tiles, scale = device_tiles(w, int8)
        return {name: tiles} | ({} if scale is None else {f"{name}_scale": scale})
    if parent.rpartition("/")[2] == "embed" and key == "embedding":
        tiles, scale = device_tiles(np.asarray(w, np.float32).T, int8)
        out = {f"{parent}/kernel": tiles}
        return out | ({} if scale is None else {f"{parent}/kernel_scale": scale})
    return {name: jnp.asarray(w, dtype)}


def check_layout(config, params) -> None:
    """Raises ValueError unless ``params`` has the tree, shapes and dtypes ``config``'s
    decoder declares (e.g. after loading in a tiled layout)."""
    _check_layout(config, params)


def tiled_params(params, int8: bool, consume: bool = False) -> dict:
    """The params of a float decoder with every ``kernel`` (``[.., D, F]``, stacked or
    not) and the ``embed`` table stored as tiles: int8 plus float32 scales, or float32.

    With ``consume`` the input dicts are emptied as their arrays are converted, so each
    float array can be freed as soon as its tiles exist: the peak memory is the result
    plus one matrix, not the model twice (the caller must hold no other reference).
    """

    def put(out, w):
        tiles, scale = device_tiles(w, int8)
        out["kernel"] = tiles
        if scale is not None:
            out["kernel_scale"] = scale

    def walk(tree, name):
        if not isinstance(tree, dict):
            return tree
        out = {}
        for key in list(tree):
            value = tree.pop(key) if consume else tree[key]
            if key == "kernel" and np.ndim(value) >= 2:
                put(out, value)
            elif name == "embed" and key == "embedding":
                put(out, jnp.asarray(value, jnp.float32).T)  # [D, V]: one column per id
            else:
                out[key] = walk(value, key)
            del value
        return out

    return walk(params if consume else dict(params), "")


AUTO = "auto"


def auto_layout(role: str, dtype: str, backend: str, one_device: bool) -> str:
    """The weight layout ``auto`` means for a ``role`` (``'target'`` or ``'draft'``) model.

    The CPU kernels' layouts where they run (a CPU backend, one device, float32, the tiled
    kernel built here: x86-64 with AVX-512 and a C++ compiler): ``'tiled'`` for a target
    (the same model, a tree of a few tokens for little more than one token's cost) and
    ``'int8'`` for a draft (a quarter of the bytes; any draft law stays exact). Elsewhere
    ``'float'``, the model dtype's own layout: XLA's products on an accelerator read
    bfloat16 or float32 weights directly, and int8 was never measured faster there.
    """
    if role not in ("target", "draft"):
        raise ValueError(f"role must be 'target' or 'draft', got {role!r}")
    if backend == "cpu" and one_device and dtype == "float32" and tiled_matmul.cpu_kernel():
        return "tiled" if role == "target" else "int8"
    return "float"


def auto_dtype(backend: str, laid_out: bool) -> str:
    """The dtype ``auto`` means: float32 on a CPU (and for the tiled layouts, which compute
    in float32), bfloat16 on an accelerator (the head still returns float32 logits)."""
    return "float32" if backend == "cpu" or laid_out else "bfloat16"


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


def convert(model: LoadedModel, weights: str, consume: bool = False) -> LoadedModel:
    """``model`` with ``ModelConfig.weights = weights`` ('float' returns it unchanged).

    ``consume``: convert in place, emptying ``model.params`` as it goes (see
    :func:`tiled_params`): for a caller that drops ``model`` right after.
    """
    c = model.config
    if weights == c.weights == "float":
        return model
    if c.weights != "float":
        raise ValueError(f"{c.name or 'the model'} already has {c.weights} weights")
    config = c.replace(weights=weights)  # checks the name and the dtype
    params = tiled_params(model.params, int8=weights == "int8", consume=consume)
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
