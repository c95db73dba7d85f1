"""The measurements of the device check (``python -m experiments.bench.device``, which
holds the flags): bandwidth, weight bytes, timed generations, the logits check, the table.
No flags here, so tests and other tools import it beside any other benchmark."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import round_timing
from experiments.common import runtime
from rsd_jax import decode, methods, transforms
from rsd_jax import generation as gen

DATA = Path(__file__).with_name("data")
PROMPT = (
    "def fibonacci(n):\n"
    '    """Return the n-th Fibonacci number, counting from fibonacci(0) == 0."""\n'
    "    if n < 2:\n        return n\n    a, b = 0, 1\n    for _ in range(n - 1):\n"
    "        a, b = b, a + b\n    return b\n\n\ndef is_prime(k):\n"
)


def read_bandwidth(megabytes: int, repeats: int = 5) -> float:
    """Bytes per second of reading a ``megabytes`` buffer once (a sum over it: what a
    decoding call does with its weights; no output buffer to allocate and fault in)."""
    n = megabytes * (1 << 20) // 4
    x = jnp.ones((n,), jnp.float32)
    seconds = round_timing.median_seconds(jax.jit(jnp.sum), x, repeats=repeats)
    return x.nbytes / seconds


def weight_bytes(params) -> int:
    """Bytes one decoding call reads: every weight, except an input embedding table that a
    separate output head spares (a call gathers one row of it)."""
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    if isinstance(params, dict) and {"lm_head", "draft_head"} & set(params):
        total -= sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params.get("embed")))
    return int(total)


def prompts_of(tokenizer, batch: int, vocab: int) -> list[list[int]]:
    """``batch`` prompts of different lengths (the fixed prompt cut at several places)."""
    ids = tokenizer.encode(PROMPT) if tokenizer is not None else list(range(3, 40))
    ids = [i % vocab for i in ids] or [3, 4]
    return [ids[: max(2, len(ids) - 3 * k)] for k in range(batch)]


def timed_generate(engine, target, draft, prompts, max_new, sampling) -> tuple[float, list]:
    """Seconds of one compiled generation (prefill + while loop) and its tokens."""
    padded, lengths = gen.pad_prompts(prompts, max(32, -(-max(map(len, prompts)) // 32) * 32))
    keys = jax.random.split(jax.random.PRNGKey(0), len(prompts))

    def once():
        state = gen.init_state(engine, target, draft, padded, lengths, keys, max_new, sampling)
        state = gen.run(engine, state, target.params, None if draft is None else draft.params)
        return jax.block_until_ready(state)

    once()  # compile
    start = time.perf_counter()
    state = once()
    seconds = time.perf_counter() - start
    gen.check_finished(state)
    return seconds, gen.generated_tokens(state, engine.eos_id)


def rates(bundle, method_texts, batches, max_new, nucleus) -> list[dict]:
    """Token rates of AR and the methods per batch size, interleaved, plus greedy == AR."""
    b = bundle
    sampled = transforms.SamplingParams(temperature=1.0, top_p=0.95)
    greedy = transforms.SamplingParams(temperature=0.0)
    rows = []
    for batch in batches:
        prompts = prompts_of(b.tokenizer, batch, b.target.vocab_size)
        engines = {}
        for text in ["ar", *method_texts]:
            m = methods.parse(text)
            engines[text] = decode.Engine(
                m, b.target.apply, b.draft.apply if m.spec.depth else None, b.target.vocab_size,
                valid_vocab_size=b.valid_vocab_size, eos_id=-1, nucleus=nucleus,
            )  # fmt: skip
        times, ref = {}, None
        for text, engine in engines.items():
            draft = b.draft if engine.method.spec.depth else None
            seconds, tokens = timed_generate(engine, b.target, draft, prompts, max_new, sampled)
            times[text] = sum(map(len, tokens)) / seconds
            _, g = timed_generate(engine, b.target, draft, prompts, max_new, greedy)
            ref = g if text == "ar" else ref
            rows.append(dict(batch=batch, method=text, tokens_per_second=times[text],
                             ratio_vs_ar=times[text] / times["ar"],
                             greedy_equal_ar=g == ref))  # fmt: skip
    return rows


def logit_check(bundle, reference: dict | None) -> dict:
    """The target's log-probabilities along the fixed prompt; against ``reference``: top-1
    agreement and max |d log p| (over the reference's top ids) from position 1 on."""
    target = bundle.target
    ids = reference["ids"] if reference else prompts_of(bundle.tokenizer, 1, target.vocab_size)[0]
    tokens = jnp.asarray([ids], jnp.int32)
    cache = target.init_cache(1, len(ids))
    positions = jnp.arange(len(ids), dtype=jnp.int32)[None]
    mask = jnp.tril(jnp.ones((len(ids), len(ids)), bool))[None]
    logits, _ = jax.jit(target.apply)(target.params, tokens, positions, mask, cache)
    logp = np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1))
    top = np.argsort(-logp, axis=-1)[:, :8]
    mine = {"ids": list(map(int, ids)), "top_ids": top.tolist(),
            "top_logp": np.take_along_axis(logp, top, -1).tolist()}  # fmt: skip
    if reference is None:
        return {"reference": None, "logp": mine}
    ref_ids = np.asarray(reference["top_ids"])
    ref_logp = np.asarray(reference["top_logp"])
    here = np.take_along_axis(logp, ref_ids, -1)
    agree = float(np.mean(top[1:, 0] == ref_ids[1:, 0]))
    return {"top1_agreement": agree, "max_abs_dlogp": float(np.max(np.abs(here - ref_logp)[1:])),
            "positions": len(ids) - 1, "logp": mine}  # fmt: skip


def check(bundle, method_texts, batches, max_new, widths, copy_mb, reference) -> dict:
    """Everything of the module docstring, as one JSON-able dict."""
    from models.kernels import nucleus as nucleus_lib

    on_cpu = jax.default_backend() == "cpu"
    nucleus = nucleus_lib.threshold if on_cpu else None
    bandwidth = read_bandwidth(copy_mb)
    out = {"backend": runtime.backend_line(), "layout": bundle.info.get("layout"),
           "read_bandwidth_gb_s": bandwidth / 1e9}  # fmt: skip
    for role, model in (("target", bundle.target), ("draft", bundle.draft)):
        size = weight_bytes(model.params)
        curve = round_timing.tree_cost_curve(model, 64, 64 + max(widths) + 1, widths)
        floor = size / bandwidth
        out[role] = {"weight_bytes": size, "floor_seconds": floor, "ar_step_seconds": curve[1],
                     "ar_over_floor": curve[1] / floor,
                     "tree_cost": {str(t): s / curve[1] for t, s in curve.items()},
                     "forward_seconds": {str(t): s for t, s in curve.items()}}  # fmt: skip
    out["rates"] = rates(bundle, method_texts, batches, max_new, nucleus)
    out["logits"] = logit_check(bundle, reference)
    return out


def table(result: dict) -> str:
    lines = [
        result["backend"],
        f"weights: {result['layout']}",
        f"read bandwidth {result['read_bandwidth_gb_s']:.1f} GB/s",
        "",
        "| model | weights MB | floor ms | AR step ms | AR / floor |",
        "|---|---|---|---|---|",
    ]
    for role in ("target", "draft"):
        r = result[role]
        lines.append(
            f"| {role} | {r['weight_bytes'] / 1e6:.0f} | {r['floor_seconds'] * 1e3:.2f} | "
            f"{r['ar_step_seconds'] * 1e3:.2f} | {r['ar_over_floor']:.2f} |"
        )
    widths = list(result["target"]["tree_cost"])
    lines += [
        "",
        "| target forward, scored tokens | " + " | ".join(widths) + " |",
        "|---|" + "---|" * len(widths),
        "| cost / one token | "
        + " | ".join(f"{result['target']['tree_cost'][w]:.2f}" for w in widths)
        + " |",
        "",
        "| batch | method | tok/s | vs AR | greedy == AR |",
        "|---|---|---|---|---|",
    ]
    for r in result["rates"]:
        lines.append(
            f"| {r['batch']} | {r['method']} | {r['tokens_per_second']:.2f} | "
            f"{r['ratio_vs_ar']:.2f}x | {'yes' if r['greedy_equal_ar'] else 'NO'} |"
        )
    lg = result["logits"]
    if lg.get("reference", True) is None:
        lines.append(
            "\nlogits: no reference compared (--reference; written with --write_reference)"
        )
    else:
        lines.append(
            f"\nlogits vs reference: top-1 agreement {lg['top1_agreement']:.3f}, "
            f"max |d log p| {lg['max_abs_dlogp']:.4f} over {lg['positions']} positions"
        )
    return "\n".join(lines)  # fmt: skip
