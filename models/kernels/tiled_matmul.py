"""Products with tiled weights (`models.arch.quantize`): a CPU kernel, with a plain-XLA fallback.

    y = matmul(x, tiles, scale, features)    # x [..., D] -> y [..., features] float32

The weights W [D, F] are stored tiled, ``tiles[b, d, j] = W[d, 64 b + j]`` (``[Fp / 64, D,
64]``, F padded with zero columns to Fp, a multiple of 64), so that each 64-column block is
one contiguous run of memory; either float32 (``scale=None``) or int8 with one float32 scale
per output column (W = tiles * scale, ``scale [Fp]``).

Why a kernel: XLA:CPU converts an int8 (or bfloat16) dot operand to float32 in memory before
the product, so an int8 matrix costs *more* than a float32 one there (measured: 3.4x on a
896 x 4864 matrix, 13x on a 896 x 32,768 head); and its product of 2-32 rows packs the
matrix and streams it ~1.4x slower than its one-row product, which is what scoring a draft
tree pays. `tiled_matmul.cc` (beside this module) is an XLA FFI custom call that reads each
weight once per call for up to 6 rows, widening int8 in registers (AVX-512, OpenMP over column
blocks):
on this project's 2-core machine 4-6x faster than XLA's float32 product for an int8 matrix,
and for float32 as fast at one row and ~1.2x its one-row time at 6 rows where XLA takes
~1.5x (docs/speed.md). It is compiled on first use with the system C++ compiler for the
machine at hand and cached (`models.kernels.native`). Where it cannot be built (no
compiler, no AVX-512, not x86) or off the CPU (GPU/TPU, where XLA fuses the conversion into
the product), the same product runs as an XLA einsum on the tiled layout.
``RSD_JAX_TILED_KERNEL=0`` turns the kernel off. Both paths agree to float rounding.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import warnings

import jax
import jax.numpy as jnp

from models.kernels import native

BLOCK = 64  # columns per tile
SOURCE = native.KERNELS / "tiled_matmul.cc"
_TARGETS = {"int8": "rsd_int8_matmul", "float32": "rsd_f32_matmul"}


def padded(features: int) -> int:
    """``features`` rounded up to a whole number of tiles."""
    return -(-features // BLOCK) * BLOCK


def matmul(x: jax.Array, tiles: jax.Array, scale: jax.Array | None, features: int):
    """``x [..., D] @ W [D, features]`` in float32, W given as ``tiles`` (float32, or int8
    with ``scale``; module doc); the CPU kernel where it is built, XLA's einsum elsewhere."""
    args = (x, tiles) if scale is None else (x, tiles, scale)
    if x.dtype == jnp.float32 and cpu_kernel():
        y = jax.lax.platform_dependent(*args, cpu=_kernel, default=reference)
    else:
        y = reference(*args)
    return y[..., :features]


def reference(x, tiles, scale=None):
    """The product in XLA ops (any backend); ``[..., Fp]`` float32."""
    y = jnp.einsum("...d,bdj->...bj", x, tiles.astype(x.dtype), preferred_element_type=jnp.float32)
    y = y.reshape(*x.shape[:-1], -1)
    return y if scale is None else y * scale


def _kernel(x, tiles, scale=None):
    out = jax.ShapeDtypeStruct(x.shape[:-1] + (tiles.shape[0] * tiles.shape[2],), jnp.float32)
    args = (x, tiles) if scale is None else (x, tiles, scale)
    target = _TARGETS["float32" if scale is None else "int8"]
    # The kernel folds every leading axis of x into rows, so a vmap over x alone could too;
    # "sequential" is the simple correct rule (nothing in this project vmaps a forward).
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args)


@functools.cache
def cpu_kernel() -> bool:
    """Builds (once per machine; cached on disk) and registers the CPU kernel. False, with
    one warning saying why, when it cannot be built here."""
    if os.environ.get("RSD_JAX_TILED_KERNEL", "1") == "0":
        return False
    if not native.x86_cpu() or not {"avx512f", "avx512bw"} <= native.cpu_flags():
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(native.build(SOURCE)))
    except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
        warnings.warn(
            f"tiled CPU kernel not available ({e}); tiled weights run through XLA, which "
            "is slower than float32 weights on a CPU",
            stacklevel=2,
        )
        return False
    for name, symbol in ((_TARGETS["int8"], library.RsdInt8Matmul),
                         (_TARGETS["float32"], library.RsdF32Matmul)):  # fmt: skip
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), "cpu")
    return True
