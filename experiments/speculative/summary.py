"""Summary statistics and quality scores of the speculative job (``summary.json``).

Per run spec (method at a sweep point), over the prompts of the run:

- ``block_efficiency``: sum of emitted tokens / sum of target calls (AR = 1;
  :func:`rsd_jax.metrics.block_efficiency`);
- ``mbsu``: ``eta / (1 + r L)``, ``r`` = draft params / target params, ``L`` = draft calls
  (:func:`rsd_jax.metrics.mbsu`);
- ``token_rate``: kept tokens (cut at ``max_new_tokens`` and EOS) / wall-clock seconds
  (prefill included); ``token_rate_ratio_vs_ar``: over the AR rate of the same prompts in
  the same workdir; ``decode_token_rate_ratio_vs_ar``: the same without the prefill time;
- ``acceptance_by_depth[d-1]``: fraction of rounds that accepted at least ``d`` draft tokens;
- ``target_tokens_per_call``: positions the target scores per call (``B`` nodes + root);
- quality on the ``summarise`` (ROUGE-2 F1, ``rouge-score``) and ``translate`` (sentence
  BLEU, ``sacrebleu``) slices against the ShareGPT reference, i.e. the first ChatGPT reply
  of the conversation (no human references ship offline). It is a *consistency* check:
  lossless methods must score like AR within noise;
- ``matches_ar`` (greedy runs only): fraction of prompts whose output equals AR's exactly.

Confidence intervals: 95% percentile bootstrap over prompts (``bootstrap`` resamples, fixed
seed; :mod:`experiments.reporting.stats`), paired with AR for the ratio. With a handful of
prompts they are wide; say so.

Markdown tables and plots are made from the summary by :mod:`experiments.reporting`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.reporting import stats
from experiments.speculative import plan as plan_lib
from rsd_jax import metrics


def _quality(recs, prompts_by_key, samples) -> dict:
    out = {}
    for dataset, metric in stats.QUALITY.items():
        pairs = [
            (r["text"], prompts_by_key[r["prompt"]].reference)
            for r in recs
            if r["dataset"] == dataset
            and r.get("text") is not None
            and prompts_by_key[r["prompt"]].reference
        ]
        if not pairs:
            continue
        try:
            values = [stats.score(metric, h, ref) for h, ref in pairs]
        except ImportError as e:
            out[dataset] = {"metric": metric, "error": f"{e}; pip install rouge-score sacrebleu"}
            continue
        est, ci = stats.mean_ci(values, samples)
        out[dataset] = {"metric": metric, "mean": est, "ci": ci, "n": len(values)}
    return out


def summarize(settings, specs, prompts, records, bundle) -> dict:
    """The ``summary.json`` content: one entry per run spec label (see module docstring)."""
    r = bundle.draft_params / bundle.target_params
    by_key = {p.key: p for p in prompts}
    keys = [p.key for p in prompts]
    ar = {k: records.get(f"{k}|ar") for k in keys}
    samples = settings.report.bootstrap
    entries = {}
    for spec in specs:
        recs = [records.get(f"{k}|{spec.text}") for k in keys]
        paired = [
            (x, ar[k])
            for x, k in zip(recs, keys, strict=True)
            if x and ar[k] and x.get("invocation") == ar[k].get("invocation")
        ]  # same prompt, same invocation: a ratio never mixes two runs' machine loads
        recs = [x for x in recs if x]
        if not recs:
            continue
        idx = stats.boot_indices(len(recs), samples)
        g = [x["generated"] for x in recs]
        calls = [x["target_calls"] for x in recs]
        eta = metrics.block_efficiency(sum(g), sum(calls))
        _, eta_ci = stats.ratio_ci(g, calls, idx)
        rate, rate_ci = stats.ratio_ci(
            [x["num_tokens"] for x in recs], [x["seconds"] for x in recs], idx
        )
        hist = np.sum([x["accepted_hist"] for x in recs], axis=0).astype(float)
        rounds = max(hist.sum(), 1.0)
        entry = dataclasses.asdict(spec) | dict(
            num_prompts=len(recs),
            block_efficiency=eta,
            block_efficiency_ci=eta_ci,
            mbsu=metrics.mbsu(eta, r, spec.length),
            mbsu_ci=[metrics.mbsu(v, r, spec.length) for v in eta_ci],
            token_rate=rate,
            token_rate_ci=rate_ci,
            acceptance_by_depth=[float(hist[d:].sum() / rounds) for d in range(1, len(hist))],
            target_tokens_per_call=float(np.sum([x["nodes_scored"] for x in recs]) / np.sum(calls))
            + 1.0,
            draft_calls_per_round=spec.length,
            tokens=int(np.sum([x["num_tokens"] for x in recs])),
            seconds=float(np.sum([x["seconds"] for x in recs])),
            per_dataset={},
            quality=_quality(recs, by_key, samples),
        )
        entry["token_rate_ratio_vs_ar"] = entry["token_rate_ratio_vs_ar_ci"] = None
        if paired:
            pidx = stats.boot_indices(len(paired), samples, seed=2)
            for name, field in (("", "seconds"), ("decode_", "decode_seconds")):
                ratio, ci = stats.paired_ratio(paired, "num_tokens", field, pidx)
                entry[f"{name}token_rate_ratio_vs_ar"] = ratio
                entry[f"{name}token_rate_ratio_vs_ar_ci"] = ci
            if all(x["temperature"] == 0 for x, _ in paired):
                entry["matches_ar"] = float(
                    np.mean([x["tokens"] == a["tokens"] for x, a in paired])
                )
        entry |= _probe_metrics(recs, calls, idx)
        for ds in dict.fromkeys(x["dataset"] for x in recs):
            sub = [x for x in recs if x["dataset"] == ds]
            entry["per_dataset"][ds] = {
                "block_efficiency": float(
                    metrics.block_efficiency(
                        np.sum([x["generated"] for x in sub]),
                        np.sum([x["target_calls"] for x in sub]),
                    )
                ),
                "num_prompts": len(sub),
            }
        entries[spec.label] = entry
    out = {
        "config": dict(settings.recorded),
        "models": bundle.info,
        "r": r,
        "intervals": f"95% percentile bootstrap over prompts, {samples} resamples",
        "quality_reference": "ShareGPT first gpt reply of the same conversation (ChatGPT), "
        "not a human reference; a consistency check across methods",
        "methods": entries,
    }
    comparison = auto_vs_hand_picked(specs, keys, records, samples)
    if comparison:
        out["auto_vs_hand_picked"] = comparison
    return out


def auto_vs_hand_picked(specs, keys, records, samples: int) -> list[dict]:
    """Per budget, ``auto_shape``'s block efficiency over the best hand-picked shape's.

    The best hand-picked shape is the one with the highest block efficiency at that
    budget, chosen after the fact (the maximum of noisy estimates, so the comparison
    leans against auto). The ratio is paired: both methods ran the same prompts, and the
    bootstrap resamples prompts jointly.
    """
    out = []
    auto = [s for s in specs if s.note.startswith(plan_lib.AUTO_NOTE)]
    for a in auto:
        rivals = [
            s
            for s in specs
            if s.sweep_value == a.sweep_value
            and not s.note.startswith(plan_lib.AUTO_NOTE)
            and s.text != "ar"
        ]
        rows = {}
        for s in [a, *rivals]:
            recs = [records.get(f"{k}|{s.text}") for k in keys]
            rows[s.label] = {k: r for k, r in zip(keys, recs, strict=True) if r}
        common = [k for k in keys if all(k in rows[s.label] for s in [a, *rivals])]
        if not common or not rivals:
            continue

        best = max(rivals, key=lambda s: _eta(rows[s.label], common))
        pairs = [(rows[a.label][k], rows[best.label][k]) for k in common]
        idx = stats.boot_indices(len(common), samples, seed=3)
        ratio, ratio_ci = stats.paired_ratio(pairs, "generated", "target_calls", idx)
        out.append(
            dict(
                budget=a.sweep_value,
                auto=a.label,
                auto_shape=a.shape,
                auto_block_efficiency=_eta(rows[a.label], common),
                best=best.label,
                best_shape=f"{best.name} {best.shape}",
                best_block_efficiency=_eta(rows[best.label], common),
                ratio=ratio,
                ratio_ci=ratio_ci,
                num_prompts=len(common),
            )
        )
    return out


def _eta(recs: dict, keys) -> float:
    g = sum(recs[k]["generated"] for k in keys)
    return metrics.block_efficiency(g, max(sum(recs[k]["target_calls"] for k in keys), 1))


def _probe_metrics(recs, calls, idx) -> dict:
    """Exact expected tokens per call on the drafted trees (runs with ``probes=True``).

    ``expected_eta_walk`` / ``expected_eta_traversal``: sums over rounds of each rule's
    exact expectation on the tree actually drafted, over target calls; their ratio
    ``traversal_gain`` is a paired comparison on identical trees (bootstrap over prompts).
    """
    if not all(x.get("expected_tokens_walk") is not None for x in recs):
        return {}
    walk = [x["expected_tokens_walk"] for x in recs]
    out = {}
    out["expected_eta_walk"], out["expected_eta_walk_ci"] = stats.ratio_ci(walk, calls, idx)
    if all(x.get("expected_tokens_traversal") is not None for x in recs):
        tv = [x["expected_tokens_traversal"] for x in recs]
        out["expected_eta_traversal"], out["expected_eta_traversal_ci"] = stats.ratio_ci(
            tv, calls, idx
        )
        out["traversal_gain"], out["traversal_gain_ci"] = stats.ratio_ci(tv, walk, idx)
    return out
