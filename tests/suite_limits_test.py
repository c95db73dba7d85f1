"""The suite stays far from the per-process memory-map limit that crashed XLA (conftest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tests import conftest


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_clearing_caches_releases_compiled_executables():
    before = _maps()
    fns = [jax.jit(lambda x, i=i: jnp.sin(x) * i + jnp.cumsum(x)) for i in range(60)]
    for i, f in enumerate(fns):
        f(jnp.ones(i + 1)).block_until_ready()
    grown = _maps()
    assert grown - before > 60  # each executable maps memory (the premise of the fixture)
    gen = conftest._free_compiled_executables.__wrapped__()
    next(gen)
    for _ in gen:  # runs the teardown
        pass
    assert _maps() - before < (grown - before) / 2
