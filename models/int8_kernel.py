"""The product of int8 weights (`models.quantize`): a CPU kernel, with a plain-XLA fallback.

    y = matmul(x, tiles, scale, features)    # x [..., D] -> y [..., features] float32

The weights W [D, F] are stored tiled, ``tiles[b, d, j] = q[d, 64 b + j]`` (``[Fp / 64, D,
64]`` int8, F padded with zero columns to Fp, a multiple of 64), with W = q * scale
(``scale [Fp]`` float32, one per output column; see `models.quantize`), so that each
64-column block is one contiguous run of memory.

Why a kernel: XLA:CPU converts an int8 (or bfloat16) dot operand to float32 in memory before
the product, so an int8 matrix costs *more* than a float32 one there (measured: 3.4x on a
896 x 4864 matrix, 13x on the 896 x 32,768 head). `kernels/int8_matmul.cc` is an XLA FFI
custom call that reads each weight byte once and widens it in registers (AVX-512, OpenMP
over column blocks): 4-6x faster than XLA's float32 product for one to two rows on this
project's 2-core machine (docs/speed.md). It is compiled on first use with the system C++
compiler for the machine at hand (``-march=native``) and cached under
``$RSD_JAX_CACHE/kernels`` (key: source, compiler, jaxlib version, CPU). Where it cannot be
built (no compiler, no AVX-512, not x86) or off the CPU (GPU/TPU, where XLA fuses the
conversion into the product), the same product runs as an XLA einsum on the tiled layout.
``RSD_JAX_INT8_KERNEL=0`` turns the kernel off. Both paths agree to float rounding.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

BLOCK = 64  # columns per tile
SOURCE = Path(__file__).with_name("kernels") / "int8_matmul.cc"
_TARGET = "rsd_int8_matmul"
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-w")


def padded(features: int) -> int:
    """``features`` rounded up to a whole number of tiles."""
    return -(-features // BLOCK) * BLOCK


def matmul(x: jax.Array, tiles: jax.Array, scale: jax.Array, features: int) -> jax.Array:
    """``x [..., D] @ W [D, features]`` in float32, W given as int8 ``tiles`` and ``scale``
    (module doc); the CPU kernel where it is built, XLA's einsum elsewhere."""
    if x.dtype == jnp.float32 and cpu_kernel():
        y = jax.lax.platform_dependent(x, tiles, scale, cpu=_kernel, default=reference)
    else:
        y = reference(x, tiles, scale)
    return y[..., :features]


def reference(x, tiles, scale):
    """The product in XLA ops (any backend); ``[..., Fp]`` float32."""
    y = jnp.einsum("...d,bdj->...bj", x, tiles.astype(x.dtype), preferred_element_type=jnp.float32)
    return y.reshape(*x.shape[:-1], -1) * scale


def _kernel(x, tiles, scale):
    out = jax.ShapeDtypeStruct(x.shape[:-1] + (scale.shape[-1],), jnp.float32)
    # The kernel folds every leading axis of x into rows, so a vmap over x alone could too;
    # "sequential" is the simple correct rule (nothing in this project vmaps a forward).
    return jax.ffi.ffi_call(_TARGET, out, vmap_method="sequential")(x, tiles, scale)


@functools.cache
def cpu_kernel() -> bool:
    """Builds (once per machine; cached on disk) and registers the CPU kernel. False, with
    one warning saying why, when it cannot be built here."""
    if os.environ.get("RSD_JAX_INT8_KERNEL", "1") == "0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not _cpu_has_avx512():
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(_build()))
    except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
        warnings.warn(
            f"int8 CPU kernel not available ({e}); int8 weights run through XLA, which is "
            "slower than float32 on a CPU",
            stacklevel=2,
        )
        return False
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(library.RsdInt8Matmul), "cpu")
    return True


def _cpu_has_avx512() -> bool:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f in info.split() for f in ("avx512f", "avx512bw"))


def _build() -> Path:
    """The compiled kernel for this source, compiler, jaxlib and CPU (built if missing)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler (set CXX or install g++)")
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256()
    jaxlib = importlib.metadata.version("jaxlib")
    for part in (SOURCE.read_bytes(), version, jaxlib, " ".join(_FLAGS), _cpu_model()):
        key.update(part if isinstance(part, bytes) else part.encode())
    cache = Path(os.environ.get("RSD_JAX_CACHE") or Path.home() / ".cache" / "rsd_jax")
    path = cache / "kernels" / f"int8_matmul-{key.hexdigest()[:16]}.so"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        cmd = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"compiling {SOURCE.name} failed: {done.stderr.strip()[-500:]}")
        out.replace(path)  # atomic: concurrent builders each install a complete file
    return path


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    first = {}
    for line in lines:
        first.setdefault(line.split(":")[0].strip(), line)
    return f"{first.get('model name', '')}\n{first.get('flags', '')}"
