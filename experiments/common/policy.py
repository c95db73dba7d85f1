"""Which method a batch size calls for (``method=auto``).

Speculation pays where a decoding call costs about the same for one token as for a few:
at batch 1 a call reads the weights once whatever it scores, but a batch of B rows scoring
trees of N nodes asks for B (N + 1) tokens per call, and once that passes what the device
does for the price of one, each round costs more and speculation stops paying.

**CPU (measured** on this project's 2-core AVX-512 machine, tiled float32 target, int8
draft, Qwen2.5-Coder 0.5B -> 1.5B, T=1 / top-p 0.95, 32 tokens, prompts of different
lengths, all methods interleaved in one process; docs/speed.md, "Batch size"):

====== ======== ======== ============== ========== ===========
batch  AR tok/s  SD L=5   RSD-C 2-1-1-1  RSD-S 2x4  best
====== ======== ======== ============== ========== ===========
1      5.25     1.81x    1.74x          1.86x      speculative
2      8.39     1.79x    1.49x          1.47x      SD L=5
4      14.61    1.28x    0.83x          0.86x      SD L=5
8      23.46    0.64x    0.42x          0.50x      AR
====== ======== ======== ============== ========== ===========

so :data:`CPU` takes a chain (SD; trees are at most even at batch 1) of length 5 up to
batch 4 and AR beyond.

**Accelerators (not measured here: no GPU or TPU was available)**: a projection from a
forward's cost curve on an H100 (a 1.7B model: 6.15 ms for 1 token, 5.96 for 16, 6.84 for
64), where up to ~64 scored tokens cost about one, so B (N + 1) <= 64 keeps speculation
paying: :data:`ACCELERATOR` takes RSD-S 2x4 (9 tokens a row) up to batch 7 and SD L=3
(4 a row) up to batch 16, then AR. Measure with ``python -m experiments.bench.device
--batches=1+2+4+8+16`` and replace it.
"""

from __future__ import annotations

AUTO = "auto"
# (largest batch size, method), in increasing batch size; past the last: AR.
CPU = ((4, "sd:5"),)
ACCELERATOR = ((7, "rsd_s:2x4"), (16, "sd:3"))


def choose(batch: int, backend: str, has_draft: bool = True) -> str:
    """The method for ``batch`` rows on ``backend`` (``jax.default_backend()``); AR without
    a draft or past the policy's largest batch."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not has_draft:
        return "ar"
    table = CPU if backend == "cpu" else ACCELERATOR
    for largest, method in table:
        if batch <= largest:
            return method
    return "ar"
