"""experiments/bench/round_timing.py on tiny random decoders: every phase, the free-model step."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import round_timing
from models import adapter
from models.kernels import nucleus
from rsd_jax import decode, methods, transforms
from tests.models_draft_vocab_test import _loaded


@pytest.mark.parametrize("method", ["ar", "sd:3", "rsd_s:2x2"])
def test_round_breakdown_reports_every_phase(method):
    target = adapter.to_rsd_model(_loaded("qwen2", 1))
    draft = adapter.to_rsd_model(_loaded("qwen2", 2))
    m = methods.parse(method)
    engine = decode.Engine(
        m, target.apply, draft.apply if m.spec.depth else None, target.vocab_size,
        nucleus=nucleus.threshold,
    )  # fmt: skip
    sampling = transforms.SamplingParams(temperature=1.0, top_p=0.9)
    out = round_timing.round_breakdown(
        engine, target, draft, [5, 9, 2, 7, 1], 8, sampling, repeats=2
    )
    for key in (*round_timing.PHASES, "step", "forwards", "overhead", "outside_forwards"):
        assert np.isfinite(out[key]), key
    assert out["step"] > 0 and out["overhead"] > 0 and out["target_forward"] > 0
    assert out["outside_forwards"] == pytest.approx(out["overhead"] / out["step"])
    assert (out["draft_forwards"] > 0) == (m.spec.depth > 0)


def test_logits_lookup_is_a_model_call():
    table = jnp.arange(2 * 3 * 5, dtype=jnp.float32).reshape(1, 3 * 2, 5)[:, :3]
    cache = object()
    logits, same = round_timing._logits_lookup(table, jnp.zeros((2, 4), jnp.int32), 0, 0, cache)
    assert same is cache and logits.shape == (2, 4, 5)
    np.testing.assert_array_equal(logits[1, 3], table[0, 0])  # rows cycle
