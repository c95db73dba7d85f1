"""The exact top-p threshold on the CPU by a small kernel, with the XLA bisection elsewhere.

    t = threshold(probs, top_p)    # probs [..., V] -> t [...] int32 (a float32 bit pattern)

Same contract as :func:`rsd_jax.transforms.top_p_threshold` (the nucleus is the ids whose
probability's bit pattern is ``>= t``), so an engine built with ``nucleus=threshold`` samples
from the same laws. Why a kernel: the bisection makes 32 masked sums over the row, about
0.55 ms per row of 152k ids on this project's 2-core CPU, and a round scores up to ~30 rows
(every draft node that is expanded and every node the target scores), which made the
sampling transforms the largest cost of a wide tree's round outside the model calls.
`nucleus.cc` (beside this module) bins each row's mass by the top 12 bits of its bit
patterns and sorts only the bin that holds the threshold: about two passes over the row,
rows in parallel (docs/speed.md). Its sums are float64 where the bisection's are float32, so
the two can differ only for a nucleus whose mass lies within float32 rounding of ``top_p``.

It is compiled on first use and cached (`models.kernels.native`); where it cannot be built (no
compiler, not x86) and off the CPU the bisection runs instead. ``RSD_JAX_NUCLEUS_KERNEL=0``
turns the kernel off.
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
from rsd_jax import transforms

SOURCE = native.KERNELS / "nucleus.cc"
_TARGET = "rsd_nucleus_threshold"


def threshold(probs: jax.Array, top_p) -> jax.Array:
    """The nucleus threshold of each row (contract of ``transforms.top_p_threshold``)."""
    probs = probs.astype(jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    if cpu_kernel():
        return jax.lax.platform_dependent(
            probs, top_p, cpu=_kernel, default=transforms.top_p_threshold
        )
    return transforms.top_p_threshold(probs, top_p)


def _kernel(probs, top_p):
    out = jax.ShapeDtypeStruct(probs.shape[:-1], jnp.int32)
    # The kernel takes one scalar top_p for all rows; "sequential" keeps that true under a
    # vmap that batches top_p too (nothing in this project vmaps the transforms).
    return jax.ffi.ffi_call(_TARGET, out, vmap_method="sequential")(probs, top_p)


@functools.cache
def cpu_kernel() -> bool:
    """Builds (once per machine; cached on disk) and registers the CPU kernel. False, with
    one warning saying why, when it cannot be built here."""
    if os.environ.get("RSD_JAX_NUCLEUS_KERNEL", "1") == "0" or not native.x86_cpu():
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(native.build(SOURCE)))
    except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
        warnings.warn(
            f"top-p CPU kernel not available ({e}); the XLA bisection runs instead",
            stacklevel=2,
        )
        return False
    symbol = library.RsdNucleusThreshold
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(symbol), "cpu")
    return True
