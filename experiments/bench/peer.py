"""Benchmark (not a test): our decoding vs Hugging Face transformers on the same weights.

    pip install -e ".[peer]"        # torch (<2.14: the CPU build), transformers, accelerate
    python -m experiments.bench.peer                       # Qwen2.5-Coder 0.5B -> 1.5B
    python -m experiments.bench.peer --target=smollm2-135m --draft=smollm2-135m \\
        --num_prompts=1 --max_new=16                       # smoke run, a minute on 2 cores

Systems, all on the same dequantized GGUF weights in float32 (transformers loads the GGUF
files itself, ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=float32)``)
and fed the same token ids (our tokenizer encodes the prompts for both sides):

- ``ours AR`` and ``ours <method>`` for each of ``--methods``: ``rsd_jax.generate``
  (one compiled loop per method; the prompts share one padded bucket, so one compile);
- ``HF plain``: ``model.generate`` (greedy at T=0, ancestral sampling at T>0);
- ``HF assisted (defaults)``: assisted generation with the assistant's default settings
  (transformers' defaults: 20 draft tokens, constant schedule, confidence stop 0.4,
  adapted during the call when scikit-learn is installed);
- ``HF assisted (4 tok)``: ``num_assistant_tokens=4``, ``num_assistant_tokens_schedule=
  'constant'``, ``assistant_confidence_threshold=0`` (no confidence stop), i.e. plain SD
  with 4 draft tokens, comparable to our ``sd:4``.

Our side stores the target's weights tiled (``--target_weights``: the same float32 model to
float rounding, computed by the tiled kernel) and the draft's as int8 (``--draft_weights``;
a different draft law, which every method verifies exactly); ``--target_weights=float
--draft_weights=float`` compares like for like in storage.

Each call's settings are fresh (the assistant's generation config is restored before each
call, so nothing adapts across calls). Prompts: the first ``--num_prompts`` HumanEval
prompts of the project's deterministic selection (``experiments.data.datasets.load_prompts``,
``--seed``); every system generates at most ``--max_new`` tokens and stops at EOS. At T>0
both sides sample the full law (HF: ``top_k=0, top_p=1``); ids at or beyond the
tokenizer's vocabulary (padding rows) are banned on both sides.

Timing: torch runs with ``torch.set_num_threads(os.cpu_count())`` (JAX uses every core by
default; ``--torch_threads`` overrides torch's count: where other processes hold cores,
torch on all cores was measured 7x slower per token than on one, smollm2-135m, 2 cores).
Every system is warmed up once (compiles, first-call overheads), then for each of
``--repeats`` passes, for each prompt, each system runs in turn (interleaved, so
background load hits all of them alike); the best time per (system, prompt) is kept.
Prefill is included in both sides' timings (wall time of the whole call, from token ids
to generated ids). Rates and ratios are totals over prompts (tokens / seconds): each
system vs our AR and vs HF plain, and our best system vs transformers' best (best = the
highest total rate of each side, picked from the same timings, for both sides alike).

Block efficiency is generated tokens per target forward call. For transformers the calls
are counted by a forward hook on the target (its first call also prefills the prompt);
ours counts rounds (its prefill is a separate call, not counted), so AR is 1 on both
sides. Greedy agreement (T=0): how many leading tokens of each system's output equal our
AR's, over the compared length. Both sides use the same float32 weights, so they should
largely agree, but float summation order can flip near-ties, so it is reported, not
asserted.

Memory: both frameworks hold both models in float32 at once (about 17 GB for the Qwen
pair), plus transformers' GGUF dequantization while loading. Results go to stdout (JSON
lines and a markdown table per temperature) and, with ``--out``, to a JSON file.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import app, flags

from experiments.common import runtime
from rsd_jax import generation as gen
from rsd_jax import methods as methods_lib
from rsd_jax import transforms

# The flags exist only when this module runs as a program: tests import it beside other
# modules (experiments.bench.ot_gap) that define flags of the same names at import.
if __name__ == "__main__":
    _TARGET = flags.DEFINE_string("target", "qwen2.5-coder-1.5b", "Target preset or local path.")
    _DRAFT = flags.DEFINE_string("draft", "qwen2.5-coder-0.5b", "Draft preset or local path.")
    _METHODS = flags.DEFINE_string(
        "methods", "sd:4+sd:5+rsd_s:2x3+rsd_c:2-1-1", "'+'-separated methods of ours (AR is added)."
    )
    _NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 4, "HumanEval prompts.")
    _SEED = flags.DEFINE_integer("seed", 0, "Prompt selection seed; sampling seeds derive from it.")
    _MAX_PROMPT_TOKENS = flags.DEFINE_integer("max_prompt_tokens", 512, "Prompt truncation.")
    _MAX_NEW = flags.DEFINE_integer("max_new", 48, "Token budget per prompt.")
    _TEMPERATURES = flags.DEFINE_string("temperatures", "0+1", "'+'-separated temperatures.")
    _REPEATS = flags.DEFINE_integer("repeats", 2, "Interleaved timed passes (best kept).")
    _OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")
    _DRAFT_VOCAB = flags.DEFINE_integer(
        "draft_vocab",
        0,
        "Our draft's head: its N most frequent ids (0 = full; see "
        "models.arch.head). transformers' assistant always scores the full vocabulary.",
    )
    _DRAFT_WEIGHTS = flags.DEFINE_enum(
        "draft_weights",
        "int8",
        ["float", "tiled", "int8"],
        "Our draft's weights (int8: models.arch.quantize, a cheaper call; exact either way). "
        "transformers' assistant runs the float32 weights.",
    )
    _TARGET_WEIGHTS = flags.DEFINE_enum(
        "target_weights",
        "tiled",
        ["float", "tiled"],
        "Our target's weights (tiled: float32 tiles for the tiled CPU kernel, the same model to "
        "float rounding). transformers runs the same float32 weights.",
    )
    _TORCH_THREADS = flags.DEFINE_integer(
        "torch_threads", None, "torch.set_num_threads (default: os.cpu_count())."
    )

HF_PLAIN = "HF plain"
HF_DEFAULT = "HF assisted (defaults)"
HF_FOUR = "HF assisted (4 tok)"
OURS_AR = "ours AR"
# assistant generation-config overrides of HF_FOUR: 4 draft tokens, no confidence stop
FOUR_TOKENS = dict(
    num_assistant_tokens=4,
    num_assistant_tokens_schedule="constant",
    assistant_confidence_threshold=0.0,
)


class Run(NamedTuple):
    """One generation: its ids (EOS included), wall seconds and target forward calls."""

    tokens: list[int]
    seconds: float
    target_calls: int


class System(NamedTuple):
    """A named way to generate: ``run(prompt_ids, temperature, seed) -> Run``."""

    name: str
    side: str  # "ours" or "hf"
    run: Callable[[Sequence[int], float, int], Run]


# ----------------------------------------------------------------------------- ours


def our_system(
    name: str,
    method: methods_lib.Method,
    target: gen.Model,
    draft: gen.Model | None,
    *,
    max_new: int,
    eos_id: int,
    valid_vocab_size: int | None,
    bucket: int,
) -> System:
    """``rsd_jax.generate`` with ``method`` (one prompt per call, padded to
    ``bucket`` so that all prompts share one compile)."""
    d = draft if method.spec.depth > 0 else None

    def run(prompt, temperature, seed):
        start = time.perf_counter()
        out = gen.generate(
            target,
            d,
            [list(prompt)],
            method,
            key=jax.random.PRNGKey(seed),
            max_new_tokens=max_new,
            sampling=transforms.SamplingParams(temperature=temperature),
            eos_id=eos_id,
            valid_vocab_size=valid_vocab_size,
            bucket=bucket,
        )
        jax.block_until_ready(out.state.tokens)
        seconds = time.perf_counter() - start
        return Run(out.tokens[0], seconds, int(out.counters.target_calls[0]))

    return System(name, "ours", run)


# ----------------------------------------------------------------------------- transformers


def hf_model_path(name_or_path: str) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) of a preset, a .gguf file or an HF directory."""
    from models.loading import presets

    if name_or_path in presets.PRESETS:
        path = presets.preset_path(name_or_path)
        if not path.is_file():
            path = presets.prepare(name_or_path)
    else:
        path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path, None
    if not path.is_file():
        raise FileNotFoundError(f"{name_or_path!r} is neither a preset nor a file/directory")
    return path.parent, path.name


def load_hf(name_or_path: str):
    """transformers' own loading of the same checkpoint, float32, eval mode."""
    import torch
    import transformers

    directory, gguf_file = hf_model_path(name_or_path)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    kw = {dtype_key: torch.float32}
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), **kw)
    return model.eval()


class _CallCounter:
    """Counts forward calls of a torch module (a forward hook)."""

    def __init__(self, module):
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        del module, inputs, output
        self.count += 1


def hf_system(
    name: str,
    target,
    draft=None,
    assistant_overrides: dict[str, Any] | None = None,
    *,
    max_new: int,
    eos_id: int,
    vocab_size: int | None = None,
    valid_vocab_size: int | None = None,
) -> System:
    """transformers' ``generate`` on ``target`` (assisted by ``draft`` if given).

    ``draft`` must be a different module object from ``target`` (the target's forward
    calls are counted by a hook). The draft's generation config is restored before each
    call and then updated with ``assistant_overrides``, so every call starts afresh.
    """
    import torch

    if draft is not None and draft is target:
        raise ValueError("load the draft separately: target calls are counted by a hook")
    counter = _CallCounter(target)
    pristine = copy.deepcopy(draft.generation_config) if draft is not None else None
    suppress = None
    if vocab_size and valid_vocab_size and valid_vocab_size < vocab_size:
        suppress = list(range(valid_vocab_size, vocab_size))

    def run(prompt, temperature, seed):
        ids = torch.tensor([list(prompt)], dtype=torch.long)
        kw: dict[str, Any] = dict(
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            eos_token_id=eos_id if eos_id >= 0 else None,
            pad_token_id=eos_id if eos_id >= 0 else 0,
            suppress_tokens=suppress,
        )
        if temperature > 0:
            kw.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
        else:
            kw.update(do_sample=False)
        if draft is not None:
            draft.generation_config = copy.deepcopy(pristine)
            for key, value in (assistant_overrides or {}).items():
                setattr(draft.generation_config, key, value)
            kw["assistant_model"] = draft
        torch.manual_seed(seed)
        counter.count = 0
        start = time.perf_counter()
        with torch.inference_mode():
            out = target.generate(ids, **kw)
        seconds = time.perf_counter() - start
        return Run(out[0, ids.shape[1] :].tolist(), seconds, counter.count)

    return System(name, "hf", run)


# ----------------------------------------------------------------------------- timing


def time_systems(
    systems: Sequence[System],
    prompts: Sequence[Sequence[int]],
    temperatures: Sequence[float],
    repeats: int,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[tuple[float, str, int], Run]:
    """Best-of-``repeats`` runs per (temperature, system, prompt index), interleaved.

    Every system is warmed up once on the first prompt (untimed). Then, per temperature,
    for each pass, for each prompt, each system runs in turn. The kept Run has the best
    seconds; its tokens and calls are the last pass's (identical across passes for a
    fixed seed, which prompt ``i`` at temperature ``t`` gets as ``seed + i``).
    """
    for system in systems:
        start = time.perf_counter()
        system.run(prompts[0], temperatures[0], seed)
        log(f"warm-up {system.name}: {time.perf_counter() - start:.1f}s")
    best: dict[tuple[float, str, int], Run] = {}
    for temperature in temperatures:
        for _ in range(repeats):
            for i, prompt in enumerate(prompts):
                for system in systems:
                    run = system.run(prompt, temperature, seed + i)
                    key = (temperature, system.name, i)
                    old = best.get(key)
                    seconds = run.seconds if old is None else min(old.seconds, run.seconds)
                    best[key] = run._replace(seconds=seconds)
    return best


def prefix_agreement(a: Sequence[int], b: Sequence[int]) -> tuple[int, int]:
    """(leading tokens equal, compared length = the shorter length)."""
    k = min(len(a), len(b))
    agree = next((i for i in range(k) if a[i] != b[i]), k)
    return agree, k


def summarize(
    runs: dict[tuple[float, str, int], Run],
    systems: Sequence[System],
    num_prompts: int,
    temperature: float,
) -> dict[str, Any]:
    """Totals over prompts per system at one temperature, ratios and greedy agreement."""
    rows = []
    for system in systems:
        per = [runs[temperature, system.name, i] for i in range(num_prompts)]
        tokens = sum(len(r.tokens) for r in per)
        seconds = sum(r.seconds for r in per)
        calls = sum(r.target_calls for r in per)
        row = dict(
            system=system.name,
            side=system.side,
            tokens=tokens,
            seconds=seconds,
            tokens_per_s=tokens / seconds,
            target_calls=calls,
            block_efficiency=tokens / calls if calls else float("nan"),
        )
        if temperature == 0 and (temperature, OURS_AR, 0) in runs:
            pairs = [
                prefix_agreement(r.tokens, runs[temperature, OURS_AR, i].tokens)
                for i, r in enumerate(per)
            ]
            row["greedy_agree_with_ours_ar"] = [sum(p[0] for p in pairs), sum(p[1] for p in pairs)]
        rows.append(row)
    by_name = {r["system"]: r for r in rows}
    for row in rows:
        for ref, key in ((OURS_AR, "ratio_vs_ours_ar"), (HF_PLAIN, "ratio_vs_hf_plain")):
            if ref in by_name:
                row[key] = row["tokens_per_s"] / by_name[ref]["tokens_per_s"]
    summary: dict[str, Any] = dict(temperature=temperature, rows=rows)
    ours = [r for r in rows if r["side"] == "ours"]
    theirs = [r for r in rows if r["side"] == "hf"]
    if ours and theirs:
        ob = max(ours, key=lambda r: r["tokens_per_s"])
        hb = max(theirs, key=lambda r: r["tokens_per_s"])
        summary.update(
            ours_best=ob["system"],
            hf_best=hb["system"],
            ours_best_vs_hf_best=ob["tokens_per_s"] / hb["tokens_per_s"],
        )
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """One temperature's table (and the best-vs-best line)."""
    t = summary["temperature"]
    greedy = t == 0
    head = "| system | tok/s | vs ours AR | vs HF plain | block eff. | target calls |"
    rule = "|---|---|---|---|---|---|"
    if greedy:
        head += " greedy agree w/ ours AR |"
        rule += "---|"
    lines = [f"T={t:g}", "", head, rule]
    for r in summary["rows"]:
        line = (
            f"| {r['system']} | {r['tokens_per_s']:.2f} | {r.get('ratio_vs_ours_ar', np.nan):.2f}"
            f" | {r.get('ratio_vs_hf_plain', np.nan):.2f} | {r['block_efficiency']:.2f}"
            f" | {r['target_calls']} |"
        )
        if greedy:
            agree = r.get("greedy_agree_with_ours_ar")
            line += f" {agree[0]}/{agree[1]} |" if agree else " - |"
        lines.append(line)
    if "ours_best" in summary:
        lines += [
            "",
            f"ours best ({summary['ours_best']}) / transformers best ({summary['hf_best']}):"
            f" {summary['ours_best_vs_hf_best']:.2f}x",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_temperatures(text: str) -> list[float]:
    temps = [float(x) for x in text.split("+") if x.strip()]
    if not temps or any(t < 0 for t in temps):
        raise ValueError(f"--temperatures must be '+'-separated values >= 0, got {text!r}")
    return temps


def humaneval_ids(tokenizer, num: int, seed: int, max_prompt_tokens: int) -> list[list[int]]:
    """Token ids of ``num`` HumanEval prompts of the project's deterministic selection."""
    from experiments.data import datasets

    picked = datasets.load_prompts("humaneval", num, seed)
    return [datasets.encode_prompt(p, tokenizer, max_prompt_tokens) for p in picked]


def bench(
    target_name: str,
    draft_name: str,
    method_texts: Sequence[str],
    temperatures: Sequence[float],
    *,
    max_new: int,
    repeats: int,
    num_prompts: int = 4,
    seed: int = 0,
    max_prompt_tokens: int = 512,
    prompts: Sequence[Sequence[int]] | None = None,
    torch_threads: int | None = None,
    draft_vocab: int = 0,
    draft_weights: str = "float",
    target_weights: str = "float",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Loads both sides, times every system, returns the JSON payload (``summaries``:
    one per temperature, see :func:`summarize`; ``runs``: every kept run).

    ``prompts`` (token ids) replaces the HumanEval selection when given; torch runs
    on ``torch_threads`` threads (default ``os.cpu_count()``).
    """
    import torch
    import transformers

    from experiments.data import vocab
    from models import adapter, loading
    from models.arch import head as head_lib
    from models.arch import quantize

    transformers.logging.set_verbosity_error()
    threads = torch_threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    log(f"torch {torch.__version__} ({threads} threads), transformers "
        f"{transformers.__version__}, jax {jax.__version__}")  # fmt: skip
    chosen = [methods_lib.parse(m) for m in method_texts if m.strip()]
    chosen = [m for m in chosen if m.spec.depth > 0]  # AR is always there

    t_loaded = loading.load_model(target_name)
    d_loaded = t_loaded if draft_name == target_name else loading.load_model(draft_name)
    loading.check_compatible(d_loaded, t_loaded)
    if draft_vocab:  # ours only: transformers' assistant keeps its full head
        ids = vocab.draft_vocab_ids(
            d_loaded.tokenizer, d_loaded.config.valid_vocab_size, draft_vocab
        )
        d_loaded = head_lib.restrict_head(d_loaded, ids)
    d_loaded = quantize.convert(d_loaded, draft_weights)
    t_loaded = quantize.convert(t_loaded, target_weights)
    target = adapter.to_rsd_model(t_loaded)
    draft = adapter.to_rsd_model(d_loaded, vocab_size=t_loaded.config.vocab_size)
    tok = t_loaded.tokenizer
    eos = tok.eos_id if tok is not None and tok.eos_id >= 0 else t_loaded.config.eos_id
    eos, valid = int(eos), int(t_loaded.config.valid_vocab_size)
    if prompts is None:
        prompts = humaneval_ids(tok, num_prompts, seed, max_prompt_tokens)
    prompts = [list(p) for p in prompts]
    bucket = max(len(p) for p in prompts)
    log(f"{len(prompts)} prompts of {[len(p) for p in prompts]} tokens")

    hf_target = load_hf(target_name)
    # always a separate object: the target's calls are counted by a hook
    same = draft_name == target_name
    hf_draft = copy.deepcopy(hf_target) if same else load_hf(draft_name)
    common = dict(max_new=max_new, eos_id=eos)
    systems = [
        our_system(OURS_AR, methods_lib.autoregressive(), target, None, **common,
                   valid_vocab_size=valid, bucket=bucket),
        *[our_system(f"ours {m.describe()}", m, target, draft, **common,
                     valid_vocab_size=valid, bucket=bucket) for m in chosen],
    ]  # fmt: skip
    hf_kw = dict(common, vocab_size=t_loaded.config.vocab_size, valid_vocab_size=valid)
    systems += [
        hf_system(HF_PLAIN, hf_target, **hf_kw),
        hf_system(HF_DEFAULT, hf_target, hf_draft, **hf_kw),
        hf_system(HF_FOUR, hf_target, hf_draft, FOUR_TOKENS, **hf_kw),
    ]
    runs = time_systems(systems, prompts, temperatures, repeats, seed, log)
    return dict(
        target=target_name,
        draft=draft_name,
        num_prompts=len(prompts),
        max_new=max_new,
        repeats=repeats,
        torch=torch.__version__,
        transformers=transformers.__version__,
        jax=jax.__version__,
        torch_threads=threads,
        note="prefill included in both sides' times; best of repeats",
        summaries=[summarize(runs, systems, len(prompts), t) for t in temperatures],
        runs=[
            dict(
                temperature=t,
                system=name,
                prompt=i,
                tokens=r.tokens,
                seconds=r.seconds,
                target_calls=r.target_calls,
            )
            for (t, name, i), r in runs.items()
        ],  # fmt: skip
    )


def main(argv):
    del argv
    runtime.announce()
    result = bench(
        _TARGET.value,
        _DRAFT.value,
        _METHODS.value.split("+"),
        parse_temperatures(_TEMPERATURES.value),
        max_new=_MAX_NEW.value,
        repeats=_REPEATS.value,
        num_prompts=_NUM_PROMPTS.value,
        seed=_SEED.value,
        max_prompt_tokens=_MAX_PROMPT_TOKENS.value,
        torch_threads=_TORCH_THREADS.value,
        draft_vocab=_DRAFT_VOCAB.value,
        draft_weights=_DRAFT_WEIGHTS.value,
        target_weights=_TARGET_WEIGHTS.value,
        log=lambda text: print(text, flush=True),
    )
    for summary in result["summaries"]:
        for row in summary["rows"]:
            print(json.dumps(dict(temperature=summary["temperature"], **row)), flush=True)
    for summary in result["summaries"]:
        print("\n" + markdown(summary), flush=True)
    print(
        f"\nTimes include prefill on both sides; best of {_REPEATS.value} interleaved passes;"
        f" at most {_MAX_NEW.value} new tokens per prompt."
    )
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    runtime.quiet_backend_probe()
    app.run(main)
