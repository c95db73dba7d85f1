"""Building this project's small C++ kernels (XLA FFI custom calls for the CPU).

Each kernel is one source file under ``models/kernels``, compiled on first use with the
system C++ compiler for the machine at hand (``-march=native``, OpenMP) and cached under
``$RSD_JAX_CACHE/kernels`` (default ``~/.cache/rsd_jax/kernels``) by a key over the source,
the compiler's version, jaxlib's version, the flags and the CPU, so a changed source or a
different machine builds anew and concurrent builders each install a complete file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

KERNELS = Path(__file__).parent  # the C++ sources lie beside this module
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-w")


def x86_cpu() -> bool:
    """Whether this is an x86-64 machine (the only one the kernels are written for)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in info.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def build(source: Path) -> Path:
    """The compiled shared library of ``source`` for this machine (built if missing).

    Raises:
      RuntimeError: no C++ compiler, or the compiler failed (its last output is included).
      subprocess.CalledProcessError: the compiler could not report its version.
    """
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler (set CXX or install g++)")
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256()
    jaxlib = importlib.metadata.version("jaxlib")
    for part in (source.read_bytes(), version, jaxlib, " ".join(FLAGS), _cpu_model()):
        key.update(part if isinstance(part, bytes) else part.encode())
    cache = Path(os.environ.get("RSD_JAX_CACHE") or Path.home() / ".cache" / "rsd_jax")
    path = cache / "kernels" / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(source), "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"compiling {source.name} failed: {done.stderr.strip()[-500:]}")
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
