"""Per-node gap to the optimal-transport bound on real models (docs/algorithms.md).

    python -m experiments.bench.ot_gap --target=qwen2.5-coder-1.5b --draft=qwen2.5-coder-0.5b \\
        --num_contexts=128 --top=8 --temperature=1.0 --out=results/ot_gap_t1.json
    python -m experiments.bench.ot_gap --target=smollm2-135m --draft=smollm2-135m-perturbed \\
        --num_contexts=32                                   # quick check, ~100 MB model

Contexts are prefixes of dataset prompts cut at random points (no generation): one
target forward and one draft forward over each whole prompt give the next-token
logits at every position, and ``num_contexts`` positions are drawn spread evenly over
the prompts (at least ``min_prefix`` tokens of context). At each context the target
law ``q`` and draft law ``p`` come from :func:`rsd_jax.transforms.probs_from_logits`
at ``--temperature``/``--top_p`` (the samplers' own transform). For ``K`` drafts the
script reports, averaged over contexts, the exact bound ``alpha*`` (i.i.d. drafts for
SD/MRS/K-SEQ, without-replacement drafts for RRS) and each verifier's exact
acceptance from :mod:`rsd_jax.ot_bound`, with the mean gap and a 95% percentile
bootstrap interval over contexts (contexts of one prompt are correlated, so the
interval is somewhat optimistic).

**Approximation.** The bound is computed by enumerating all ``2^V`` token sets, which
is impossible over a real vocabulary. Both laws are therefore restricted to the union
of the top-``top`` tokens of ``q`` and of ``p`` and renormalised; the tail mass dropped
from each is printed. Bound and acceptances are exact *for the restricted laws*, not
for the full ones: the reported gaps are estimates that are reliable when the dropped
mass is small. As a check the table footer compares ``1 - TV(p, q)`` (SD's acceptance,
which equals ``alpha*`` at ``K = 1``) on the full and the restricted laws.

A draft name ``<preset>-perturbed`` is the preset with multiplicative weight noise
(``--perturb``, fixed seed), as in ``tests/decode_real_test.py``: a cheap draft that
agrees often but not always with its target.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.common import runtime, strict_json
from experiments.reporting import stats
from rsd_jax import kv_cache, ot_bound, transforms

_TARGET = flags.DEFINE_string("target", "qwen2.5-coder-1.5b", "Target preset or local path.")
_DRAFT = flags.DEFINE_string(
    "draft", "qwen2.5-coder-0.5b", "Draft preset or path; '<preset>-perturbed' for a noisy copy."
)
_DATASETS = flags.DEFINE_string("datasets", "humaneval+chat", "'+'-separated prompt datasets.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 16, "Prompts in all (spread over datasets).")
_NUM_CONTEXTS = flags.DEFINE_integer("num_contexts", 128, "Contexts (cut points) in all.")
_MIN_PREFIX = flags.DEFINE_integer("min_prefix", 8, "Fewest prompt tokens in a context.")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt_tokens", 256, "Prompt text truncation.")
_TOP = flags.DEFINE_integer("top", 8, "Restrict q and p to the union of their top tokens.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature of both models.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass of both models (1 = off).")
_KS = flags.DEFINE_string("ks", "1,2,3,4", "Numbers of drafts K.")
_PERTURB = flags.DEFINE_float("perturb", 0.15, "Weight noise of a '-perturbed' draft.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 2000, "Bootstrap resamples.")
_SEED = flags.DEFINE_integer("seed", 0, "Prompt selection and cut points.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Model dtype.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")

RULES = {1: ("sd",)}  # K = 1: every rule is SD
MULTI_RULES = ("mrs", "kseq", "rrs")


def rules_for(k: int) -> tuple[str, ...]:
    return RULES.get(k, MULTI_RULES)


# ----------------------------------------------------------------------------- contexts


def choose_contexts(lengths: Sequence[int], num: int, min_prefix: int, seed: int):
    """``[(prompt index, position)]``: ``num`` cut points spread evenly over the prompts.

    Position ``t`` means the context ``ids[: t + 1]`` (its next-token law is the
    logits row ``t``); ``t + 1 >= min_prefix``. Fewer are returned when the prompts
    are too short. Deterministic given ``seed``.
    """
    rng = np.random.default_rng(seed)
    base, extra = divmod(num, max(len(lengths), 1))
    out = []
    for i, n in enumerate(lengths):
        avail = np.arange(min_prefix - 1, n)
        take = min(base + (i < extra), avail.size)
        out += [(i, int(t)) for t in np.sort(rng.choice(avail, take, replace=False))]
    return out


_prefill = jax.jit(kv_cache.prefill, static_argnums=0)


def logits_at(model, prompts: Sequence[Sequence[int]], contexts, bucket: int = 64) -> np.ndarray:
    """``[C, V]`` float32 logits of ``model`` (an ``rsd_jax.Model``) at the contexts.

    One causal forward per prompt over the whole prompt (padded at the end to a
    multiple of ``bucket``, which leaves the real positions unchanged).
    """
    rows = []
    for i, ids in enumerate(prompts):
        pos = [t for j, t in contexts if j == i]
        if not pos:
            continue
        width = -(-len(ids) // bucket) * bucket
        tokens = np.zeros((1, width), np.int32)
        tokens[0, : len(ids)] = ids
        cache = model.init_cache(1, width)
        logits, _ = _prefill(model.apply, model.params, jnp.asarray(tokens), cache)
        rows.append(np.asarray(logits[0, np.asarray(pos)], np.float32))
    return np.concatenate(rows)


def laws(logits: np.ndarray, temperature: float, top_p: float, valid_vocab: int) -> np.ndarray:
    """``[C, V]`` sampling laws (float64) from logits, padding ids banned."""
    banned = transforms.vocab_mask(logits.shape[-1], valid_vocab)
    probs = transforms.probs_from_logits(jnp.asarray(logits), temperature, 0, top_p, banned)
    return np.asarray(probs, np.float64)


def restrict_top(q: np.ndarray, p: np.ndarray, top: int):
    """Both laws on the union of their top-``top`` ids, renormalised, zero-padded to ``2 top``.

    Returns:
      ``(q_r, p_r, ids, dropped_q, dropped_p)``: restricted ``[2 top]`` laws, the
      kept ids (sorted), and the mass each law lost (the approximation's size).

    Raises:
      ValueError: ``2 top > ot_bound.MAX_VOCAB`` (the bound enumerates ``2^(2 top)`` sets).
    """
    if not 1 <= 2 * top <= ot_bound.MAX_VOCAB:
        raise ValueError(f"top must be in [1, {ot_bound.MAX_VOCAB // 2}], got {top}")
    top = min(top, q.size)
    ids = np.union1d(np.argsort(-q, kind="stable")[:top], np.argsort(-p, kind="stable")[:top])
    rest = np.ones(q.size, bool)
    rest[ids] = False
    out = []
    for law in (q, p):
        kept = np.zeros(2 * top)
        kept[: ids.size] = law[ids]
        out.append(kept / kept.sum())
    return out[0], out[1], ids, float(q[rest].sum()), float(p[rest].sum())


def node_record(q: np.ndarray, p: np.ndarray, ks: Sequence[int], top: int) -> dict:
    """Exact bounds and acceptances at one context (restricted to the top tokens)."""
    qr, pr, ids, dq, dp = restrict_top(q, p, top)
    rec = dict(
        union=int(ids.size),
        dropped_q=dq,
        dropped_p=dp,
        one_minus_tv_full=float(1 - 0.5 * np.abs(q - p).sum()),
        one_minus_tv_restricted=float(1 - 0.5 * np.abs(qr - pr).sum()),
        by_k={},
    )
    for k in ks:
        entry = dict(
            bound_iid=ot_bound.alpha_star(qr, pr, k, replacement=True).value,
            bound_wor=ot_bound.alpha_star(qr, pr, k, replacement=False).value,
        )
        for rule in rules_for(k):
            entry[rule] = ot_bound.verifier_acceptance(qr, pr, k, rule)
        rec["by_k"][str(k)] = entry
    return rec


def summarize(records: Sequence[dict], ks: Sequence[int], samples: int) -> dict:
    """Per ``K`` and rule: mean bound, mean acceptance, mean gap with its bootstrap CI."""
    rows = []
    for k in ks:
        for rule in rules_for(k):
            kind = "bound_iid" if ot_bound.uses_replacement(rule) else "bound_wor"
            bound = np.array([r["by_k"][str(k)][kind] for r in records])
            acc = np.array([r["by_k"][str(k)][rule] for r in records])
            gap, gap_ci = stats.mean_ci(bound - acc, samples)
            rows.append(
                dict(
                    k=k,
                    rule=rule,
                    drafts="iid" if kind == "bound_iid" else "without replacement",
                    bound=float(bound.mean()),
                    acceptance=float(acc.mean()),
                    gap=gap,
                    gap_ci=gap_ci,
                    max_gap=float((bound - acc).max()),
                )
            )

    def stat(field):
        x = np.array([r[field] for r in records])
        return dict(mean=float(x.mean()), max=float(x.max()))

    return dict(
        num_contexts=len(records),
        rows=rows,
        dropped_q=stat("dropped_q"),
        dropped_p=stat("dropped_p"),
        union=stat("union"),
        one_minus_tv_full=stat("one_minus_tv_full")["mean"],
        one_minus_tv_restricted=stat("one_minus_tv_restricted")["mean"],
        intervals=f"95% percentile bootstrap over contexts, {samples} resamples",
    )


def format_table(summary: dict) -> str:
    """Markdown table of :func:`summarize` with the approximation's size below it."""
    lines = [
        "| K | rule | drafts | alpha* (mean) | acceptance (mean) | gap [95% CI] | max gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['k']} | {r['rule']} | {r['drafts']} | {r['bound']:.4f} | "
            f"{r['acceptance']:.4f} | {r['gap']:.4f} [{r['gap_ci'][0]:.4f}, "
            f"{r['gap_ci'][1]:.4f}] | {r['max_gap']:.4f} |"
        )
    s = summary
    lines.append(
        f"\n{s['num_contexts']} contexts; laws restricted to the union of top tokens "
        f"(mean {s['union']['mean']:.1f} ids) and renormalised; dropped tail mass: target "
        f"mean {s['dropped_q']['mean']:.4f} (max {s['dropped_q']['max']:.4f}), draft mean "
        f"{s['dropped_p']['mean']:.4f} (max {s['dropped_p']['max']:.4f}). 1 - TV(p, q): full "
        f"{s['one_minus_tv_full']:.4f}, restricted {s['one_minus_tv_restricted']:.4f}. "
        f"Intervals: {s['intervals']}."
    )
    return "\n".join(lines)


def estimate(target_logits, draft_logits, ks, top, temperature, top_p, valid_vocab, samples):
    """Core of the script: logits rows at the contexts -> ``(records, summary)``."""
    q_all = laws(target_logits, temperature, top_p, valid_vocab)
    p_all = laws(draft_logits, temperature, top_p, valid_vocab)
    records = [node_record(q, p, ks, top) for q, p in zip(q_all, p_all, strict=True)]
    return records, summarize(records, ks, samples)


# ----------------------------------------------------------------------------- I/O


def load(name: str, dtype: str, perturb: float):
    """``(rsd Model, LoadedModel)`` for a preset/path, or a noisy copy for '-perturbed'."""
    from models import adapter, loading

    suffix = "-perturbed"
    base = name[: -len(suffix)] if name.endswith(suffix) else name
    loaded = loading.load_model(base, dtype=dtype)
    if base != name:
        rng = np.random.default_rng(0)

        def noisy(x):
            return x * (1.0 + perturb * jnp.asarray(rng.normal(size=x.shape), x.dtype))

        loaded = loaded._replace(params=jax.tree.map(noisy, loaded.params))
    return adapter.to_rsd_model(loaded), loaded


def encoded_prompts(tokenizer) -> tuple[list[str], list[list[int]]]:
    from experiments.data import datasets

    names = [x for x in _DATASETS.value.split("+") if x]
    base, extra = divmod(_NUM_PROMPTS.value, len(names))
    keys, ids = [], []
    for i, name in enumerate(names):
        for prompt in datasets.load_prompts(name, base + (i < extra), _SEED.value):
            keys.append(prompt.key)
            ids.append(datasets.encode_prompt(prompt, tokenizer, _MAX_PROMPT.value))
    return keys, ids


def main(argv):
    del argv
    runtime.announce()
    from models import loading

    ks = [int(x) for x in _KS.value.split(",")]
    start = time.perf_counter()
    draft_base = _DRAFT.value.removesuffix("-perturbed")
    target_info = loading.load_model_info(_TARGET.value)
    loading.check_compatible(loading.load_model_info(draft_base), target_info)
    keys, prompts = encoded_prompts(target_info.tokenizer)
    contexts = choose_contexts(
        [len(p) for p in prompts], _NUM_CONTEXTS.value, _MIN_PREFIX.value, _SEED.value
    )
    print(f"{len(prompts)} prompts, {len(contexts)} contexts")
    rows = {}
    for role, name in (("target", _TARGET.value), ("draft", _DRAFT.value)):
        model = load(name, _DTYPE.value, _PERTURB.value)[0]
        rows[role] = logits_at(model, prompts, contexts)
        del model  # one model in memory at a time
        gc.collect()
        elapsed = time.perf_counter() - start
        print(f"{role} {name}: logits at {len(contexts)} contexts ({elapsed:.0f}s)")
    records, summary = estimate(
        rows["target"], rows["draft"], ks, _TOP.value, _TEMPERATURE.value, _TOP_P.value,
        target_info.config.valid_vocab_size, _BOOTSTRAP.value,
    )  # fmt: skip
    print(
        f"\ntarget {_TARGET.value}, draft {_DRAFT.value}, T={_TEMPERATURE.value}, "
        f"top_p={_TOP_P.value}, top={_TOP.value} ({time.perf_counter() - start:.0f}s)\n"
    )
    print(format_table(summary))
    if _OUT.value:
        config = {f: flags.FLAGS[f].value for f in ("target", "draft", "datasets", "num_prompts")}
        config |= dict(num_contexts=len(contexts), top=_TOP.value, temperature=_TEMPERATURE.value)
        config |= dict(top_p=_TOP_P.value, ks=ks, seed=_SEED.value)
        for rec, (i, t) in zip(records, contexts, strict=True):
            rec |= dict(prompt=keys[i], position=t)
        with open(_OUT.value, "w") as f:
            strict_json.dump(dict(config=config, summary=summary, contexts=records), f, indent=1)
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    runtime.quiet_backend_probe()
    app.run(main)
