"""Golden outputs of the engine: reshaping or optimising the step must not change a single token.

Tokens and counters of every method, sampled (T=1 with top-p 0.9) and greedy, with fixed
keys, on two pairs: the toy cached tables of ``models.toy`` (V=4, exact arithmetic paths)
and a tiny random qwen2-architecture decoder drafting for another (real forward, tree masks,
cache commits, vocabulary padding). ``tests/data/engine_golden.json`` was recorded from the
engine before it was split into named phases; regenerate it only for an intended change of
behaviour:

    python -m tests.engine_golden_test --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from models import adapter, decoder, testing
from rsd_jax import generate as gen
from rsd_jax import transforms

GOLDEN = Path(__file__).parent / "data" / "engine_golden.json"
METHODS = (
    "ar",
    "sd:3",
    "mrs:2x2",
    "spectr:2x2",
    "rsd_c:2-2",
    "rsd_c:2-1-1",
    "rsd_s:3x2",
    "sd:3/tv",
    "rsd_c:2-1-1/tv",
    "rsd_s:2x3/tv",
)
SAMPLINGS = {
    "greedy": transforms.SamplingParams(temperature=0.0),
    "sampled": transforms.SamplingParams(temperature=1.0, top_p=0.9),
}


def _toy_pair():
    target, draft, _ = testing.toy_pair()
    return target, draft, [[1, 2, 3], [0, 3], [2, 2, 2, 2, 1]], None


def _tiny_pair():
    # Vocabulary padded to 300 ids of which 265 are valid, as Qwen pads its vocabulary.
    cfg = testing.tiny_config("qwen2", vocab_size=300, valid_vocab_size=265)
    models = []
    for seed in (1, 2):
        params = decoder.init_params(cfg, jax.random.PRNGKey(seed), noise=0.3)
        models.append(adapter.to_rsd_model(type("M", (), {"config": cfg, "params": params})))
    target, draft = models
    return target, draft, [[5, 17, 99, 3], [250, 7]], cfg.valid_vocab_size


PAIRS = {"toy": _toy_pair, "tiny_qwen2": _tiny_pair}


def outputs(pair: str) -> dict:
    """{sampling: {method: {"tokens": ..., "counters": ...}}} for one pair."""
    target, draft, prompts, valid = PAIRS[pair]()
    result = {}
    for name, sampling in SAMPLINGS.items():
        result[name] = {}
        for method in METHODS:
            out = gen.generate(
                target,
                None if method == "ar" else draft,
                prompts,
                method,
                key=jax.random.PRNGKey(7),
                max_new_tokens=12,
                sampling=sampling,
                valid_vocab_size=valid,
            )
            c = out.counters
            result[name][method] = {
                "tokens": [list(map(int, t)) for t in out.tokens],
                "counters": {
                    "target_calls": np.asarray(c.target_calls).tolist(),
                    "draft_calls": np.asarray(c.draft_calls).tolist(),
                    "generated": np.asarray(c.generated).tolist(),
                    "accepted_hist": np.asarray(c.accepted_hist).tolist(),
                    "nodes_scored": np.asarray(c.nodes_scored).tolist(),
                },
            }
    return result


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_engine_outputs_equal_the_recorded_golden_outputs(pair):
    golden = json.loads(GOLDEN.read_text())[pair]
    got = outputs(pair)
    for sampling in SAMPLINGS:
        for method in METHODS:
            assert got[sampling][method] == golden[sampling][method], (pair, sampling, method)


def test_golden_outputs_are_not_trivial():
    """Negative control of the comparison: the recorded runs differ between methods and
    samplings, so a step that ignored its method or its key could not match them all."""
    golden = json.loads(GOLDEN.read_text())
    for pair in PAIRS:
        sampled = golden[pair]["sampled"]
        assert len({json.dumps(v["counters"]) for v in sampled.values()}) > 3
        assert golden[pair]["greedy"]["sd:3"]["tokens"] == golden[pair]["greedy"]["ar"]["tokens"]
        assert sampled["sd:3"]["tokens"] != golden[pair]["greedy"]["sd:3"]["tokens"]


if __name__ == "__main__":
    if "--write" in sys.argv:
        GOLDEN.write_text(json.dumps({p: outputs(p) for p in PAIRS}, indent=1) + "\n")
        print(f"wrote {GOLDEN}")
