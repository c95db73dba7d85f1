"""What a run executes on: JAX's backend in one log line, a warning when an accelerator is on
the machine but JAX landed on the CPU, and JAX's persistent compilation cache.

Every entry point logs :func:`backend_line` before its work, e.g.
``JAX 0.10.2 on cpu: 1 device (cpu) in 1 process``, and :func:`accelerator_warning` when it
applies, e.g. ``warning: a GPU is present (/dev/nvidia0) but JAX runs on the CPU ...``.
:func:`quiet_backend_probe` drops the INFO line JAX logs for every backend it fails to
start (``Unable to initialize backend 'tpu'`` on every CPU machine).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Traces of an accelerator on this machine that JAX would use if its plugin were installed.
_GPU_FILES = ("/dev/nvidia0", "/dev/nvidiactl")
_TPU_FILES = ("/dev/accel0", "/dev/vfio/0")
_TPU_ENV = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")


# Distributions of a runtime's JAX: an accelerator image or Colab brings its own versions.
RUNTIME_JAX = (
    "jax", "jaxlib", "libtpu", "libtpu-nightly", "jax-cuda12-plugin", "jax-cuda12-pjrt",
    "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-rocm60-plugin", "jax-rocm60-pjrt",
)  # fmt: skip


def runtime_constraints() -> list[str]:
    """pip constraints pinning the JAX distributions already installed (``jax==0.11.0``,
    ...), so that installing the project keeps them (see ``notebooks/quickstart.ipynb``)."""
    from importlib import metadata

    out = []
    for name in RUNTIME_JAX:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return out


def install_keeping_jax(root: str | os.PathLike = ".", quiet: bool = True) -> list[str]:
    """``pip install -e root`` with the installed JAX pinned (:func:`runtime_constraints`);
    returns the pins. Stdlib only: it runs before the project's requirements exist."""
    import subprocess
    import sys
    import tempfile

    pins = runtime_constraints()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(pins) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "-e", str(root), "-c", f.name]
    subprocess.run(cmd + (["-q"] if quiet else []), check=True)
    os.unlink(f.name)
    return pins


def quiet_backend_probe() -> None:
    """Keeps JAX's INFO line about backends it could not start out of the logs."""
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def backend_line() -> str:
    """``JAX <version> on <backend>: <n> device(s) (<kinds>) in <p> process(es)``."""
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    n, p = len(devices), jax.process_count()
    return (
        f"JAX {jax.__version__} on {jax.default_backend()}: {n} device{'s' * (n != 1)} "
        f"({', '.join(kinds)}) in {p} process{'es' * (p != 1)}"
    )


def expected_accelerator() -> str | None:
    """An accelerator this machine shows (device files, TPU runtime variables), or None."""
    for path in _GPU_FILES:
        if os.path.exists(path):
            return f"a GPU is present ({path})"
    for name in _TPU_ENV:
        if os.environ.get(name):
            return f"a TPU runtime is set up ({name} is set)"
    for path in _TPU_FILES:
        if os.path.exists(path) and Path("/sys/class/accel").exists():
            return f"a TPU is present ({path})"
    return None


def accelerator_warning() -> str | None:
    """One line when an accelerator is expected but JAX runs on the CPU (else None)."""
    import jax

    expected = expected_accelerator()
    if expected is None or jax.default_backend() != "cpu":
        return None
    forced = os.environ.get("JAX_PLATFORMS", "")
    why = (
        f"JAX_PLATFORMS={forced!r} is set"
        if forced
        else (
            "this jax/jaxlib has no plugin for it, e.g. pip install 'jax[cuda12]' for a GPU or "
            "'jax[tpu]' for a TPU, keeping the runtime's own versions"
        )
    )
    return f"warning: {expected} but JAX runs on the CPU: {why}"


def announce(log=print) -> None:
    """Logs the backend line, and the accelerator warning when it applies."""
    log(backend_line())
    warning = accelerator_warning()
    if warning:
        log(warning)


def enable_compile_cache(path: str, min_compile_seconds: float = 1.0) -> str | None:
    """Points JAX's persistent compilation cache at ``path`` (``~`` expanded).

    Executables that took at least ``min_compile_seconds`` to compile are stored there
    and reused by later processes with the same program and shapes. Returns the
    directory, or None for an empty ``path``.
    """
    if not path:
        return None
    import jax

    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path
