"""Memory before loading: what a pair of models will take, against what the machine has.

A job that would not fit stops with one line before it loads anything, instead of being
killed by the kernel halfway through a 7 GB load. The estimate is the models' weights in
the layouts they will have (float32, bfloat16, float32 tiles, int8 tiles), plus the largest
single tensor converted at a time and a fixed allowance for JAX, XLA's compiled programs
and the KV caches (:data:`OVERHEAD_BYTES`, measured: docs/speed.md, "Memory").
``RSD_JAX_SKIP_MEMORY_CHECK=1`` skips the check.
"""

from __future__ import annotations

import os

OVERHEAD_BYTES = int(1.5e9)
BYTES = {"float32": 4.0, "bfloat16": 2.0, "tiled": 4.0, "int8": 1.0}


class InsufficientMemoryError(MemoryError):
    """The models would not fit the memory available (the message says both amounts)."""


def available_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo (what can be allocated without swapping), or
    None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def param_count(config) -> tuple[int, int]:
    """``(all parameters, the largest single tensor)`` of a ``ModelConfig``'s decoder."""
    import jax
    import numpy as np

    from models.arch import decoder

    shapes = jax.eval_shape(
        lambda key: decoder.init_params(config.replace(scan_layers=False), key),
        jax.random.key(0),
    )
    sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)]
    return sum(sizes), max(sizes)


def model_bytes(config, dtype: str, weights: str) -> tuple[int, int]:
    """``(bytes of the weights in their final layout, bytes of the largest float32 tensor
    met on the way)`` for a model of ``config``."""
    count, largest = param_count(config)
    per = BYTES["int8"] if weights == "int8" else BYTES["tiled" if weights == "tiled" else dtype]
    return int(count * per), 4 * largest


def check(models: list[tuple[str, object, str, str]]) -> int:
    """Raises :class:`InsufficientMemoryError` when ``models`` (``(name, config, dtype,
    weights)`` each) would not fit; returns the estimate in bytes."""
    need = OVERHEAD_BYTES
    largest = 0
    for _, config, dtype, weights in models:
        size, tensor = model_bytes(config, dtype, weights)
        need += size
        largest = max(largest, tensor)
    need += 2 * largest  # a tensor and its converted copy, one at a time
    have = available_bytes()
    if have is None or os.environ.get("RSD_JAX_SKIP_MEMORY_CHECK") == "1" or need <= have:
        return need
    names = " and ".join(f"{name} ({dtype}, {weights})" for name, _, dtype, weights in models)
    raise InsufficientMemoryError(
        f"loading {names} needs about {need / 1e9:.1f} GB of memory and {have / 1e9:.1f} GB is "
        "available: free memory, or use smaller models or dtype=bfloat16 (to try anyway: "
        "RSD_JAX_SKIP_MEMORY_CHECK=1)"
    )
