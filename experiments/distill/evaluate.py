"""Evaluation of a distilled draft: the same methods with it and with the draft it came
from, AR alongside, on held-out HumanEval and chat prompts, in one process.

For each temperature and prompt, AR and every (draft, method) pair generate in turn, so
that the machine's background load falls on all of them alike; each generation is
compiled and warmed up before any is timed. Records go to ``WORKDIR/eval.jsonl`` (one per
generation, keyed, so an interrupted evaluation resumes). The table reports, per
temperature, draft and method: block efficiency (tokens per target call), the acceptance
rate at each depth (rounds accepting at least d tokens over rounds accepting at least
d - 1), and the token rate relative to AR on the same prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.common.progress import progress_bar
from experiments.common.records import append_record, load_records
from experiments.data import datasets, vocab
from experiments.distill.settings import Settings
from experiments.speculative import sources
from experiments.speculative.settings import paper_sampling
from experiments.speculative.timed import TimedGenerator, prompt_rng_key
from rsd_jax import methods as methods_lib
from rsd_jax import metrics

EVAL = "eval.jsonl"


def _bundle(target, draft, info: dict) -> sources.Bundle:
    from models import adapter

    tok = target.tokenizer
    return sources.Bundle(
        adapter.to_rsd_model(target),
        adapter.to_rsd_model(draft, vocab_size=target.config.vocab_size),
        tok,
        int(tok.eos_id if tok.eos_id >= 0 else target.config.eos_id),
        int(target.config.valid_vocab_size),
        sources.count_params(target.params),
        sources.count_params(draft.params),
        info,
    )


def prompts(settings: Settings, tokenizer, temperature: float) -> list[sources.EncodedPrompt]:
    """``evaluation.prompts`` prompts per dataset of ``evaluation.datasets`` (chat ones
    templated)."""
    out = []
    for name in settings.evaluation.datasets:
        top_p = paper_sampling(name)[1]  # the paper's top-p, at every temperature
        for p in datasets.load_prompts(name, settings.evaluation.prompts, settings.seed):
            ids = datasets.encode_prompt(p, tokenizer, 128, "auto")
            out.append(sources.EncodedPrompt(p.key, name, ids, p.reference, temperature, top_p))
    return out


def acceptance_by_depth(hist) -> list[float | None]:
    """``hist[a]`` = rounds accepting exactly a tokens -> P(accept >= d | >= d - 1)."""
    hist = np.asarray(hist, float)
    at_least = hist[::-1].cumsum()[::-1]  # rounds accepting >= a
    return [None if at_least[d - 1] == 0 else float(at_least[d] / at_least[d - 1])
            for d in range(1, len(hist))]  # fmt: skip


def run(settings: Settings, workdir: Path, target, trained, base, log=print) -> dict:
    """Generates and summarises; returns ``{temperature: rows}`` (see the module doc)."""
    from models.arch import head as head_lib

    drafts = {"distilled": trained}
    if base is not None:
        if settings.student.draft_vocab:
            ids = vocab.draft_vocab_ids(
                base.tokenizer, base.config.valid_vocab_size, settings.student.draft_vocab
            )
            base = head_lib.restrict_head(base, ids)
        drafts[settings.student.init_from] = base
    bundles = {name: _bundle(target, d, {"draft": name}) for name, d in drafts.items()}
    methods = {text: methods_lib.parse(text) for text in settings.evaluation.methods}
    spec_methods = {text: m for text, m in methods.items() if m.draft_calls > 0}
    temps = list(settings.evaluation.temperatures)
    all_prompts = {t: prompts(settings, target.tokenizer, t) for t in temps}
    bucket = max(32, -(-max(len(p.ids) for ps in all_prompts.values() for p in ps) // 32) * 32)
    max_new = settings.evaluation.max_new_tokens
    any_bundle = next(iter(bundles.values()))
    generators = {("-", "ar"): TimedGenerator(any_bundle, methods_lib.parse("ar"), bucket, max_new)}
    for draft_name, bundle in bundles.items():
        for text, m in spec_methods.items():
            generators[(draft_name, text)] = TimedGenerator(bundle, m, bucket, max_new)
    path = workdir / EVAL
    records = load_records(path)
    first = all_prompts[temps[0]][0]
    for gen in generators.values():
        gen.warm_up(first)
    todo = sum(1 for t in temps for p in all_prompts[t] for k in generators
               if _key(t, p.key, k) not in records)  # fmt: skip
    log(f"evaluation: {todo} generations ({len(generators)} per prompt and temperature)")
    bar = progress_bar(todo, settings.progress, "gen", "evaluation")
    for t in temps:
        for p in all_prompts[t]:
            for k, gen in generators.items():
                key = _key(t, p.key, k)
                if key in records:
                    continue
                out = gen(p, prompt_rng_key(settings.seed, p.key))
                record = {"key": key, "temperature": t, "prompt": p.key, "dataset": p.dataset,
                          "draft": k[0], "method": k[1]} | out  # fmt: skip
                record.pop("text", None)
                append_record(path, record)
                records[key] = record
                bar.update(1)
    bar.close()
    summary = summarise(records.values(), temps)
    log(format_table(summary))
    return summary


def _key(temperature: float, prompt: str, generator: tuple[str, str]) -> str:
    return f"T={temperature:g}|{prompt}|{generator[0]}|{generator[1]}"


def summarise(records, temps) -> dict:
    """Per temperature: rows of draft, method, block efficiency, acceptance by depth,
    tokens/s and its ratio to AR over the same prompts."""
    out = {}
    records = list(records)
    for t in temps:
        rows = [r for r in records if r["temperature"] == t]
        ar = {r["prompt"]: r for r in rows if r["method"] == "ar"}
        groups: dict = {}
        for r in rows:
            groups.setdefault((r["draft"], r["method"]), []).append(r)
        table = []
        for (draft, method), group in sorted(groups.items(), key=lambda kv: kv[0][1] != "ar"):
            paired = [r for r in group if r["prompt"] in ar]
            tokens = sum(r["num_tokens"] for r in group)
            seconds = sum(r["seconds"] for r in group)
            ar_rate = sum(ar[r["prompt"]]["num_tokens"] for r in paired) / max(
                sum(ar[r["prompt"]]["seconds"] for r in paired), 1e-9
            )
            rate_paired = sum(r["num_tokens"] for r in paired) / max(
                sum(r["seconds"] for r in paired), 1e-9
            )
            hist = np.sum([r["accepted_hist"] for r in group], axis=0).tolist()
            table.append({
                "draft": draft, "method": method, "prompts": len(group),
                "block_efficiency": metrics.block_efficiency(
                    sum(r["generated"] for r in group), sum(r["target_calls"] for r in group)
                ),
                "acceptance_by_depth": acceptance_by_depth(hist),
                "tokens_per_s": tokens / max(seconds, 1e-9),
                "ratio_vs_ar": rate_paired / ar_rate if paired else None,
                "round_seconds": float(np.mean([r["round_seconds"] for r in group])),
            })  # fmt: skip
        out[f"{t:g}"] = table
    return out


def format_table(summary: dict) -> str:
    lines = []
    for t, rows in summary.items():
        lines.append(f"\nT={t}: draft | method | block eff. | acceptance by depth | tok/s | x AR")
        for r in rows:
            acc = " ".join("-" if a is None else f"{a:.2f}" for a in r["acceptance_by_depth"])
            ratio = "-" if r["ratio_vs_ar"] is None else f"{r['ratio_vs_ar']:.2f}"
            lines.append(f"  {r['draft']} | {r['method']} | {r['block_efficiency']:.2f} | "
                         f"{acc or '-'} | {r['tokens_per_s']:.2f} | {ratio}")  # fmt: skip
    return "\n".join(lines)
