"""Benchmark (not a test): tokens/s of every method vs AR on a real pair, in one process.

    python -m experiments.bench.decode                      # Qwen2.5-Coder 0.5B -> 1.5B
    python -m experiments.bench.decode --temperature=1 --top_p=0.95 --draft_vocab=0+32768
    python -m experiments.bench.decode --draft_weights=float+int8   # int8 draft (quantize)
    python -m experiments.bench.decode --target_weights=tiled --draft_weights=int8
    python -m experiments.bench.decode --target=smollm2-135m --draft=smollm2-135m --max_new=32

For each method (and each draft variant: head size of ``--draft_vocab`` x weight storage
of ``--draft_weights``) it reports tokens/s and the ratio to AR measured in the same run,
and block efficiency (tokens per target call); then
where one round's time goes, phase by phase (:mod:`experiments.bench.round_timing`: draft
forwards, draft sampling, the target forward, the sampling transforms, verification, the
commit and the rest), and the tree cost curve: one forward over T new tokens relative to
T = 1, for the target and each draft, at the cache size of the run, with the draft's cost
per call relative to the target's (r). Every method is compiled and warmed up before it
is timed, and timing passes interleave the methods (best of ``--repeats``) so that
background load affects all of them alike. Prefill is included in the timed generation.
``--profile DIR`` writes a ``jax.profiler`` trace of the first timed pass (open it with
TensorBoard's profile plugin or Perfetto). Results go to stdout and, with --out, to JSON.
"""

from __future__ import annotations

import json
import time

import jax
from absl import app, flags

from experiments.bench import round_timing
from experiments.common import runtime
from experiments.data import vocab
from rsd_jax import decode, methods, transforms
from rsd_jax import generation as gen

_TARGET = flags.DEFINE_string("target", "qwen2.5-coder-1.5b", "Target preset or local path.")
_DRAFT = flags.DEFINE_string("draft", "qwen2.5-coder-0.5b", "Draft preset or local path.")
_METHODS = flags.DEFINE_string(
    "methods", "ar+sd:3+mrs:2x3+spectr:2x3+rsd_c:2-1-1+rsd_s:2x3", "'+'-separated methods."
)
_DRAFT_VOCAB = flags.DEFINE_string(
    "draft_vocab",
    "0",
    "'+'-separated draft head sizes to compare (0 = the full vocabulary; N = the N "
    "most frequent ids of experiments.data.datasets.vocabulary_corpus plus special tokens).",
)
_DRAFT_WEIGHTS = flags.DEFINE_string(
    "draft_weights",
    "float",
    "'+'-separated draft weight storages to compare (float, tiled, int8: models.arch.quantize).",
)
_TARGET_WEIGHTS = flags.DEFINE_string(
    "target_weights",
    "float",
    "The target's weights (float | tiled, models.arch.quantize); '+'-separated: the methods run "
    "with the first, the tree cost curve covers each (e.g. tiled+float: before and after).",
)
_MAX_NEW = flags.DEFINE_integer("max_new", 48, "Tokens generated per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = greedy).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass (1 = off).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Interleaved timed passes (best kept).")
_BREAKDOWN = flags.DEFINE_bool("breakdown", True, "Time each phase of a round per method.")
_CURVE = flags.DEFINE_string(
    "curve", "1+2+4+8+16+32", "Tree cost curve: '+'-separated T ('' = skip)."
)
_PROFILE = flags.DEFINE_string("profile", None, "Write a jax.profiler trace of one pass here.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")

PROMPTS = [
    'def has_close_elements(numbers: list[float], threshold: float) -> bool:\n    """Check if any'
    ' two numbers are closer to each other than the threshold."""\n',
    'def fizzbuzz(n: int) -> list[str]:\n    """Return the FizzBuzz sequence up to n."""\n',
]


def _print_table(header, rows):
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |", flush=True)


def main(argv):
    del argv
    runtime.announce()
    from models import adapter, loading
    from models.arch import head as head_lib
    from models.arch import quantize
    from models.kernels import nucleus

    t_loaded = loading.load_model(_TARGET.value)
    d_loaded = loading.load_model(_DRAFT.value)
    loading.check_compatible(d_loaded, t_loaded)
    target_weights = _TARGET_WEIGHTS.value.split("+")
    other_targets = {
        f"target ({w})": adapter.to_rsd_model(quantize.convert(t_loaded, w))
        for w in target_weights[1:]
    }
    t_loaded = quantize.convert(t_loaded, target_weights[0])
    target = adapter.to_rsd_model(t_loaded)
    drafts = {}  # label of the variant -> model
    for size in (int(v) for v in _DRAFT_VOCAB.value.split("+")):
        loaded = d_loaded
        if size:
            ids = vocab.draft_vocab_ids(d_loaded.tokenizer, d_loaded.config.valid_vocab_size, size)
            loaded = head_lib.restrict_head(d_loaded, ids)
        for weights in _DRAFT_WEIGHTS.value.split("+"):
            variant = quantize.convert(loaded, weights)
            parts = [f"draft vocab {size}"] * bool(size)
            parts += [f"{weights} draft"] * (weights != "float")
            drafts[", ".join(parts)] = adapter.to_rsd_model(
                variant, vocab_size=t_loaded.config.vocab_size
            )
    tok = t_loaded.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS]
    bucket = max(len(p) for p in prompts)
    sampling = transforms.SamplingParams(temperature=_TEMPERATURE.value, top_p=_TOP_P.value)
    eos, valid = t_loaded.config.eos_id, t_loaded.config.valid_vocab_size
    runs = []  # (label, method, draft variant)
    for text in _METHODS.value.split("+"):
        method = methods.parse(text)
        for variant in drafts if method.spec.depth > 0 else [None]:
            label = method.describe() + ("" if not variant else f" | {variant}")
            runs.append((label, method, variant))

    def generate(method, variant, prompt):
        return gen.generate(
            target, None if variant is None else drafts[variant], [prompt], method,
            key=jax.random.PRNGKey(0), max_new_tokens=_MAX_NEW.value, sampling=sampling,
            eos_id=eos, valid_vocab_size=valid, bucket=bucket, nucleus=nucleus.threshold,
        )  # fmt: skip

    # Compile and warm up everything first, then time in interleaved passes
    # (best of `repeats` per method), so background load hits all methods alike.
    for _, method, variant in runs:
        generate(method, variant, prompts[0])
    best = {label: [float("inf")] * len(prompts) for label, _, _ in runs}
    outs = {}
    for rep in range(_REPEATS.value):
        if rep == 0 and _PROFILE.value:
            jax.profiler.start_trace(_PROFILE.value)
        for label, method, variant in runs:
            for i, prompt in enumerate(prompts):
                start = time.perf_counter()
                out = generate(method, variant, prompt)
                jax.block_until_ready(out.state.tokens)
                best[label][i] = min(best[label][i], time.perf_counter() - start)
                outs[label, i] = out
        if rep == 0 and _PROFILE.value:
            jax.profiler.stop_trace()
            print(f"profile of one pass written to {_PROFILE.value}")
    rows = []
    for label, method, variant in runs:
        calls = sum(int(outs[label, i].counters.target_calls[0]) for i in range(len(prompts)))
        generated = sum(len(outs[label, i].tokens[0]) for i in range(len(prompts)))
        total = sum(best[label])
        row = dict(
            method=label, draft=variant, tokens=generated, seconds=total,
            tokens_per_s=generated / total, block_efficiency=generated / calls,
            target_calls=calls,
        )  # fmt: skip
        if _BREAKDOWN.value:
            engine = decode.Engine(
                method, target.apply, None if variant is None else drafts[variant].apply,
                target.vocab_size, valid, eos, nucleus=nucleus.threshold,
            )  # fmt: skip
            d = None if variant is None else drafts[variant]
            row["round"] = round_timing.round_breakdown(
                engine, target, d, prompts[0], _MAX_NEW.value, sampling
            )
            row["outside_forward_fraction"] = row["round"]["outside_forwards"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    ar = next((r for r in rows if r["method"].startswith("AR")), None)
    for r in rows:
        r["ratio_vs_ar"] = r["tokens_per_s"] / ar["tokens_per_s"] if ar else float("nan")
    print(f"\n{_TARGET.value} <- {_DRAFT.value}, T={_TEMPERATURE.value}, top-p {_TOP_P.value}, "
          f"{len(prompts)} prompts x {_MAX_NEW.value} tokens, prefill included")  # fmt: skip
    _print_table(
        ["method", "tok/s", "ratio vs AR", "block eff."],
        [[r["method"], f"{r['tokens_per_s']:.2f}", f"{r['ratio_vs_ar']:.2f}",
          f"{r['block_efficiency']:.2f}"] for r in rows],
    )  # fmt: skip
    if _BREAKDOWN.value:
        _print_table(
            ["method (ms per round)", "step", *round_timing.PHASES, "step, free models",
             "outside forwards"],
            [[r["method"], f"{1e3 * r['round']['step']:.1f}",
              *(f"{1e3 * r['round'][p]:.1f}" for p in round_timing.PHASES),
              f"{1e3 * r['round']['overhead']:.1f}",
              f"{100 * r['outside_forward_fraction']:.1f}%"] for r in rows],
        )  # fmt: skip
    curves = {}
    if _CURVE.value:
        widths = [int(w) for w in _CURVE.value.split("+")]
        capacity = bucket + _MAX_NEW.value + max(widths) + 2
        prefix = bucket + _MAX_NEW.value // 2
        models = (
            {"target": target}
            | other_targets
            | {f"draft ({variant or 'full vocab, float'})": d for variant, d in drafts.items()}
        )
        for name, model in models.items():
            curves[name] = round_timing.tree_cost_curve(model, prefix, capacity, widths)
        one = curves["target"][widths[0]]
        _print_table(
            ["model (ms, x T=1)", *(f"T={w}" for w in widths), "r = call / target call"],
            [[name, *(f"{1e3 * c[w]:.1f} (x{c[w] / c[widths[0]]:.2f})" for w in widths),
              f"{c[widths[0]] / one:.3f}"] for name, c in curves.items()],
        )  # fmt: skip
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(
                dict(
                    target=_TARGET.value, draft=_DRAFT.value, temperature=_TEMPERATURE.value,
                    top_p=_TOP_P.value, rows=rows, curves=curves, note="prefill included",
                ),
                f, indent=2,
            )  # fmt: skip


if __name__ == "__main__":
    runtime.quiet_backend_probe()
    app.run(main)
