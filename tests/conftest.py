"""Suite-wide fixtures.

XLA:CPU maps a few memory regions per compiled executable (about 3.3 measured), and a
pytest worker that keeps every executable of hundreds of tests alive passes Linux's
default limit of 65,530 maps per process (vm.max_map_count); the next compile then
crashes inside LLVM with a segfault (seen in CI at about half the fast suite, with ~41,000
maps per worker). Dropping JAX's compilation caches after each test module frees them:
modules share no compiled functions worth keeping.
"""

from __future__ import annotations

import gc

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_executables():
    yield
    jax.clear_caches()
    gc.collect()
