"""Benchmark (not a test): tokens/s of every method vs AR on a real pair, in one process.

    python -m experiments.bench_decode                      # Qwen2.5-Coder 0.5B -> 1.5B
    python -m experiments.bench_decode --target=smollm2-135m --draft=smollm2-135m --max_new=32

For each method it reports tokens/s and the ratio to AR measured in the same
run, block efficiency (tokens per target call), and the fraction of the step's
wall time spent outside model forwards (the forwards are timed separately at
the exact shapes a round uses). Every method is compiled and warmed up before
it is timed, and timing passes interleave the methods (best of ``--repeats``)
so that background load affects all of them alike. Prefill is included in
the timed generation. Results go to stdout and, with --out, to a JSON file.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from rsd_jax import generate as gen
from rsd_jax import kv_cache, methods, transforms

_TARGET = flags.DEFINE_string("target", "qwen2.5-coder-1.5b", "Target preset or local path.")
_DRAFT = flags.DEFINE_string("draft", "qwen2.5-coder-0.5b", "Draft preset or local path.")
_METHODS = flags.DEFINE_string(
    "methods", "ar+sd:3+mrs:2x3+spectr:2x3+rsd_c:2-1-1+rsd_s:2x3", "'+'-separated methods."
)
_MAX_NEW = flags.DEFINE_integer("max_new", 48, "Tokens generated per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = greedy).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Interleaved timed passes (best kept).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")

PROMPTS = [
    'def has_close_elements(numbers: list[float], threshold: float) -> bool:\n    """Check if any'
    ' two numbers are closer to each other than the threshold."""\n',
    'def fizzbuzz(n: int) -> list[str]:\n    """Return the FizzBuzz sequence up to n."""\n',
]


def _time(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def forward_time_per_round(target, draft, method, capacity, batch):
    """Wall time of the model forwards one round of ``method`` makes, at its exact shapes."""
    spec = method.spec

    def call(model, width):
        fwd = jax.jit(model.apply)
        cache = model.init_cache(batch, capacity)
        tokens = jnp.zeros((batch, width), jnp.int32)
        positions = jnp.zeros((batch, width), jnp.int32)
        mask = kv_cache.causal_prefix_mask(jnp.zeros((batch,), jnp.int32), width, capacity)
        return _time(fwd, model.params, tokens, positions, mask, cache)

    total = call(target, spec.num_nodes + 1)
    if spec.depth > 0:
        total += call(draft, 2)
        for level in range(1, spec.depth):
            total += call(draft, spec.level_sizes[level - 1])
    return total


def main(argv):
    del argv
    from models import adapter, loading

    t_loaded = loading.load_model(_TARGET.value)
    d_loaded = loading.load_model(_DRAFT.value)
    loading.check_compatible(d_loaded, t_loaded)
    target, draft = adapter.to_rsd_model(t_loaded), adapter.to_rsd_model(d_loaded)
    tok = t_loaded.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS]
    bucket = max(len(p) for p in prompts)
    sampling = transforms.SamplingParams(temperature=_TEMPERATURE.value)
    eos = t_loaded.config.eos_id
    chosen = [methods.parse(text) for text in _METHODS.value.split("+")]

    def kwargs():
        return dict(
            key=jax.random.PRNGKey(0),
            max_new_tokens=_MAX_NEW.value,
            sampling=sampling,
            eos_id=eos,
            valid_vocab_size=t_loaded.config.valid_vocab_size,
            bucket=bucket,
        )

    # Compile and warm up everything first, then time in interleaved passes
    # (best of `repeats` per method), so background load hits all methods alike.
    for method in chosen:
        d = draft if method.spec.depth > 0 else None
        gen.generate(target, d, prompts[:1], method, **kwargs())
    best = {m: [float("inf")] * len(prompts) for m in chosen}
    outs = {}
    for _ in range(_REPEATS.value):
        for method in chosen:
            d = draft if method.spec.depth > 0 else None
            for i, prompt in enumerate(prompts):
                start = time.perf_counter()
                out = gen.generate(target, d, [prompt], method, **kwargs())
                jax.block_until_ready(out.state.tokens)
                best[method][i] = min(best[method][i], time.perf_counter() - start)
                outs[method, i] = out
    rows = []
    for method in chosen:
        calls = sum(int(outs[method, i].counters.target_calls[0]) for i in range(len(prompts)))
        generated = sum(len(outs[method, i].tokens[0]) for i in range(len(prompts)))
        engine_capacity = bucket + _MAX_NEW.value + method.spec.num_nodes + 2
        fwd = forward_time_per_round(target, draft, method, engine_capacity, 1)
        total = sum(best[method])
        rows.append(
            dict(
                method=method.describe(),
                tokens=generated,
                seconds=total,
                tokens_per_s=generated / total,
                block_efficiency=generated / calls,
                target_calls=calls,
                outside_forward_fraction=max(0.0, 1.0 - calls * fwd / total),
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    ar = next((r for r in rows if r["method"].startswith("AR")), None)
    print("\n| method | tok/s | ratio vs AR | block eff. | outside forwards |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = r["tokens_per_s"] / ar["tokens_per_s"] if ar else float("nan")
        r["ratio_vs_ar"] = ratio
        print(
            f"| {r['method']} | {r['tokens_per_s']:.2f} | {ratio:.2f} | "
            f"{r['block_efficiency']:.2f} | {100 * r['outside_forward_fraction']:.0f}% |"
        )
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(
                dict(target=_TARGET.value, draft=_DRAFT.value, rows=rows, note="prefill included"),
                f,
                indent=2,
            )


if __name__ == "__main__":
    app.run(main)
