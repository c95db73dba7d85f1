"""experiments/bench/ot_gap.py on tiny random decoders (no real model is loaded)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments.bench import ot_gap
from models import adapter
from models.arch import decoder
from models.arch.config import ModelConfig

V = 64


def _model(seed: int):
    config = ModelConfig(
        arch="llama", vocab_size=V, valid_vocab_size=V - 4, hidden=32, layers=1, heads=4,
        kv_heads=2, head_dim=8, mlp_hidden=48, rms_eps=1e-5, rope_theta=1000.0,
        rope_layout="rotate_half", qkv_bias=False, tied_embeddings=True,
    )  # fmt: skip
    params = decoder.init_params(config, jax.random.key(seed), noise=0.5)
    return adapter.to_rsd_model(type("Loaded", (), {"config": config, "params": params})())


def test_choose_contexts_spreads_and_respects_min_prefix():
    ctx = ot_gap.choose_contexts([10, 3, 30], num=12, min_prefix=4, seed=0)
    assert [i for i, _ in ctx].count(1) == 0  # too short for a 4-token context
    assert [i for i, _ in ctx].count(0) == 4 and [i for i, _ in ctx].count(2) == 4
    assert all(t >= 3 for _, t in ctx) and len(set(ctx)) == len(ctx)
    assert ctx == ot_gap.choose_contexts([10, 3, 30], num=12, min_prefix=4, seed=0)


def test_restrict_top_reports_the_dropped_mass():
    rng = np.random.default_rng(0)
    q, p = rng.dirichlet(np.ones(30)), rng.dirichlet(np.ones(30))
    qr, pr, ids, dq, dp = ot_gap.restrict_top(q, p, 4)
    assert qr.shape == pr.shape == (8,)
    assert set(np.argsort(-q)[:4]) | set(np.argsort(-p)[:4]) == set(ids)
    assert abs(dq - (1 - q[ids].sum())) < 1e-12 and abs(dp - (1 - p[ids].sum())) < 1e-12
    np.testing.assert_allclose(qr[: ids.size], q[ids] / q[ids].sum())
    assert abs(qr.sum() - 1) < 1e-12 and np.all(pr[ids.size :] == 0)
    with pytest.raises(ValueError, match="top must be in"):
        ot_gap.restrict_top(q, p, 11)


def test_estimate_on_tiny_random_models():
    target, draft = _model(0), _model(1)
    prompts = [[1, 5, 7, 9, 11, 2, 3], [4, 4, 8, 15, 16, 23, 42, 0, 1, 2]]
    contexts = ot_gap.choose_contexts([len(p) for p in prompts], num=6, min_prefix=2, seed=1)
    t_rows = ot_gap.logits_at(target, prompts, contexts, bucket=8)
    d_rows = ot_gap.logits_at(draft, prompts, contexts, bucket=8)
    assert t_rows.shape == d_rows.shape == (6, V)
    # The forward over the padded prompt gives the same row as over the bare context.
    i, t = contexts[0]
    alone = ot_gap.logits_at(target, [prompts[i][: t + 1]], [(0, t)], bucket=1)
    np.testing.assert_allclose(alone[0], t_rows[0], atol=1e-5)
    ks = [1, 2, 3]
    records, summary = ot_gap.estimate(t_rows, d_rows, ks, 3, 1.0, 1.0, V - 4, samples=200)
    assert len(records) == 6 and summary["num_contexts"] == 6
    for rec in records:
        assert 0 <= rec["dropped_q"] < 1 and 0 <= rec["dropped_p"] < 1
        one = rec["by_k"]["1"]
        assert abs(one["sd"] - rec["one_minus_tv_restricted"]) < 1e-9  # SD = 1 - TV
        assert abs(one["bound_iid"] - one["sd"]) < 1e-9  # and it is optimal at K = 1
        for k in ks:
            e = rec["by_k"][str(k)]
            for rule in ot_gap.rules_for(k):
                bound = e["bound_iid"] if rule != "rrs" else e["bound_wor"]
                assert e[rule] <= bound + 1e-12
    assert {(r["k"], r["rule"]) for r in summary["rows"]} == {
        (1, "sd"), (2, "mrs"), (2, "kseq"), (2, "rrs"), (3, "mrs"), (3, "kseq"), (3, "rrs"),
    }  # fmt: skip
    for r in summary["rows"]:
        assert r["gap_ci"][0] <= r["gap"] <= r["gap_ci"][1]
    table = ot_gap.format_table(summary)
    assert table.count("\n| ") == len(summary["rows"]) and "dropped tail mass" in table
