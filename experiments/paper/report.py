"""The reproduction's report: figures and ``findings.md`` from the regimes' workdirs.

    python -m experiments.paper report --root=/work/runs/paper --out=docs/paper

Everything in it is computed from the records at the time of the call; nothing is typed
in by hand. Stage wall times come from ``ROOT/stages.jsonl`` (written by ``run``).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np

from experiments.paper import figures, findings, load, wallclock
from experiments.paper import measures as ms
from experiments.paper.regimes import Regime


def _widths(points) -> list[str]:
    lines = [
        "| task | perspective points | prompts | largest half width | points within +-5% | "
        "prompts for +-5% (estimate) |",
        "|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(p.task for p in points):
        pts = [p for p in points if p.task == task]
        hw = max(p.half_width for p in pts)
        n = max(p.n for p in pts)
        ok = sum(p.half_width <= ms.HALF_WIDTH_TARGET for p in pts)
        need = int(np.ceil(n * (hw / ms.HALF_WIDTH_TARGET) ** 2)) if hw > 0 else n
        lines.append(f"| {task} | {len(pts)} | {n} | {hw:.3f} | {ok} of {len(pts)} | {need} |")
    return lines


def _acceptance(wd, points) -> list[str]:
    """Evidence: acceptance by depth of the longest SD chain and A_0(b) by sibling rank of
    the RSD-C shape widest at the root (then deepest), per task, over the given points."""

    def pick(task, name, key):
        cands = [p for p in points if p.task == task and p.name == name]
        return max(cands, key=key, default=None)

    sd_l = max((p.length for p in points if p.name == "SD"), default=0)
    root = lambda p: (int(p.text.split(":")[1].split("-")[0]), p.length)  # noqa: E731
    widest = [p for p in points if p.name == "RSD-C"]
    rc_shape = max(widest, key=root).text.split(":")[1] if widest else "-"
    lines = [
        f"| task | T, top-p | SD L={sd_l}: acceptance at depth 1..{sd_l} "
        f"| RSD-C {rc_shape}: A_0(b) by sibling rank b |",
        "|---|---|---|---|",
    ]
    for task in wd.task_names:
        sd = pick(task, "SD", lambda p: p.length)
        rc = pick(task, "RSD-C", root)
        t, top_p = wd.sampling(task)
        acc = " / ".join(f"{a:.2f}" for a in sd.acceptance_by_depth) if sd else "-"
        rank = " / ".join(f"{a:.2f}" for a in rc.rank_accept[0]) if rc and rc.rank_accept else "-"
        where = "mixed" if task == load.ALL else f"{t:g}, {top_p:g}"
        lines.append(f"| {task} | {where} | {acc} | {rank} |")
    return lines


def _stage_times(root: Path, workdirs: dict) -> list[str]:
    """Each finished stage's wall time and the share of it spent in timed decoding (the
    records of the invocation that started within the stage); the rest is loading,
    compiling, calibrating and timing AR's warm-up."""
    path = root / "stages.jsonl"
    if not path.is_file():
        return ["(no stages.jsonl: the workdirs were filled by hand-run commands)"]
    lines = [
        "| regime | stage | prompts | wall seconds | timed decoding seconds | finished |",
        "|---|---|---|---|---|---|",
    ]
    for line in path.read_text().splitlines():
        s = json.loads(line)
        end = datetime.datetime.fromisoformat(s["finished"]).timestamp()
        wd = workdirs.get(s["regime"])
        busy = sum(
            b
            for start, b in (wd.invocations.values() if wd else ())
            if end - s["seconds"] - 1 <= start <= end
        )
        lines.append(
            f"| {s['regime']} | {s['stage']} | {s['num_prompts']} | {s['seconds']:.0f} | "
            f"{busy:.0f} ({busy / max(s['seconds'], 1e-9):.0%}) | {s['finished']} |"
        )
    return lines


def _lossless(path: Path) -> list[str]:
    """The regime's greedy check (``run``'s ``lossless`` stage): per method, the share of
    prompts whose T = 0 output equals AR's token for token."""
    summary = path.parent / f"{path.name}_lossless" / "summary.json"
    if not summary.is_file():
        return ["(not run: `python -m experiments.paper run` runs it before the sweeps)"]
    data = json.loads(summary.read_text())
    cfg = data.get("config", {})
    lines = [
        f"T = 0, {cfg.get('num_prompts', '?')} prompts ({cfg.get('dataset', '?')}), "
        f"{cfg.get('max_new_tokens', '?')} new tokens each (`{summary}`):",
        "",
        "| method | block efficiency | output == AR's (share of prompts) |",
        "|---|---|---|",
    ]
    for label, e in data["methods"].items():
        if "matches_ar" in e and label.lower() != "ar":  # AR against itself says nothing
            lines.append(f"| {label} | {e['block_efficiency']:.2f} | {e['matches_ar']:.2f} |")
    return lines


def _draft(root: Path, regime: Regime) -> list[str]:
    """The regime's distilled draft: its figures from the distil stage's ``summary.json``."""
    workdir = regime.distill_dir(root)
    path = workdir / "summary.json"
    if not regime.distill or not path.is_file():
        return []
    d = json.loads(path.read_text())
    b, a, c = d["heldout_before"], d["heldout_after"], d["cost"]
    cfg = d.get("config", {}) or json.loads((workdir / "config.json").read_text())
    base = cfg.get("init_from", "the base model")
    blocks = f"blocks {cfg['keep_layers']} of {base}, " if cfg.get("keep_layers") else ""
    overlap = lambda stats: stats.get("heldout_overlap", float("nan"))  # noqa: E731
    return [
        f"### The draft (`python -m experiments.run --config={regime.distill_config}`)",
        "",
        f"- {blocks}{d['draft_params'] / 1e6:.1f}M parameters "
        f"(target {d['target_params'] / 1e6:.0f}M); "
        f"one-token forward {c['draft_seconds'] * 1e3:.1f} ms against the target's "
        f"{c['target_seconds'] * 1e3:.1f} ms, both in {cfg.get('dtype', '?')}: r = {c['r']:.3f} "
        "by time on this CPU (the sweeps run the draft in int8: the section's r above).",
        f"- Held-out ({cfg.get('corpus', '?')} corpus) KL to the target {b['heldout_kl']:.2f} -> "
        f"{a['heldout_kl']:.2f} nats/token; top-1 agreement {b['heldout_agree']:.3f} -> "
        f"{a['heldout_agree']:.3f}; overlap (one-token acceptance bound at T = 1) "
        f"{overlap(b):.3f} -> {overlap(a):.3f}.",
        f"- Teacher laws {d['teacher_seconds']:.0f} s (this run's share; the rest cached), "
        f"training {d['train_seconds']:.0f} s ({d['train_tokens_per_s']:.0f} tokens/s).",
        "",
    ]


def regime_section(wd, out: Path, regime: Regime | None = None, root: Path | None = None):
    length = ms.points(wd, "length")
    budget = ms.points(wd, "budget")
    table = ms.points(wd, "table")
    auto = ms.points(wd, "auto")
    figs = [
        figures.figure(length, "length", wd.regime, out),
        figures.figure(budget, "budget", wd.regime, out),
    ]
    r = wd.r
    md = [f"## {wd.regime} (`{wd.path}`)", ""]
    md += [
        f"r = {r:.4f} (parameters read per draft call over the target's; the MBSU's r). "
        "Tasks and sampling: "
        + ", ".join(f"{t} (T={wd.sampling(t)[0]:g}, top-p {wd.sampling(t)[1]:g})" for t in wd.tasks)
        + ".",
        "",
    ]
    if regime is not None and root is not None:
        md += _draft(root, regime)
    md += [f"![{f.name}]({f.name})" for f in figs if f is not None] + [""]
    md += ["### Lossless: greedy output equals AR's", ""] + _lossless(Path(wd.path)) + [""]
    md += ["### Interval widths (block efficiency, probe estimates)", ""]
    md += _widths(length + budget + table) + [""]
    if length:
        rows, verdict = findings.fixed_length(wd, length)
        md += ["### Finding 1: at fixed L, RSD beats SD and SpecTr", "", f"**{verdict}**", ""]
        md += ["Block-efficiency ratios, paired over prompts:", ""] + rows + [""]
    if budget:
        rows, cells, growth = findings.fixed_budget(wd, budget)
        md += ["### Finding 2: at fixed B, RSD-S wins most cases and its lead grows with B", ""]
        md += [f"**RSD-S ahead of every rival: {cells}**; **lead grows: {growth}**", ""]
        md += rows + [""]
        rows, verdict = findings.sd_vs_rsd_c(wd, budget)
        md += ["### Finding 3: plain SD can beat RSD-C at B = 6 and 10", "", f"**{verdict}**", ""]
        md += rows + [""]
    texts = list(dict.fromkeys(p.text for p in length + budget + table))
    rows, verdict = findings.quality(wd, texts)
    md += ["### Finding 4: quality unchanged (ROUGE-2 / BLEU vs AR)", "", f"**{verdict}**", ""]
    md += rows + [""]
    if table:
        md += ["### The paper's Table shapes on this pair (block efficiency, probe estimates)", ""]
        md += findings.table_shapes(wd, table) + [""]
    if auto:
        rows, eff, rate = findings.auto_shapes(wd, auto, budget, budget + length + table)
        md += ["### auto_shape and auto_rate against the hand-picked shapes", ""]
        md += [
            f"**At least the best hand-picked block efficiency: {eff}**; **at least the "
            f"fastest hand-picked token rate: {rate}**",
            "",
        ]
        md += rows + [""]
    md += ["### Evidence: acceptance by depth and by sibling rank", ""]
    md += _acceptance(wd, length + budget) + [""]
    if budget:
        others = length + table + auto
        rows, wins = wallclock.trees_vs_chain(wd, budget, budget + length + table, others)
        md += ["### Token rate on this CPU: best tree against the best chain", ""]
        md += [
            "Trees ahead of every chain (interval above 1): "
            + ("; ".join(wins) if wins else "nowhere"),
            "",
        ]
        md += rows + [""]
        md += [
            "### Projection to an accelerator (a model, not a measurement)",
            "",
            "Speed-up over AR of the best method per budget if one forward cost what the "
            "issue's H100 curve of a 1.7B model says (6.15 ms for 1 token ... 6.84 ms for 64) "
            "and a draft forward cost rho times the target's for as many tokens "
            "(experiments/paper/wallclock.py). Block efficiencies are the measured ones.",
            "",
        ]
        md += wallclock.projection(budget, budget + length + table) + [""]
        _, costs = load.calibration(wd)
        if costs is not None:
            md += [
                "The same cost model on this CPU, with the forward costs timed by `auto_rate` "
                "instead of the H100 curve, against the token rate measured here (all tasks "
                "pooled): the model leaves out verification, sampling, prefill and host work, "
                "so the measured / predicted factor says how much to discount the projection.",
                "",
            ]
            md += wallclock.model_check(budget + length, costs) + [""]
    return md


def write(root: Path, regimes: list[Regime], out: Path) -> Path:
    """Writes the figures and ``out/findings.md``; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    md = [
        "# The paper's experiment on real models: measured findings",
        "",
        f"Generated by `python -m experiments.paper report --root={root} --out={out}` on "
        f"{datetime.date.today().isoformat()}. Verdict rules: experiments/paper/findings.py; "
        "intervals: 95% percentile bootstrap over prompts, paired where two methods are "
        "compared (experiments/paper/measures.py).",
        "",
    ]
    read = {}
    for regime in regimes:
        path = root / regime.name
        if (path / "config.json").is_file():
            read[path.name] = load.read(path, regime.label)
            md += regime_section(read[path.name], out, regime, root)
    md += ["## Stage wall times", ""] + _stage_times(root, read) + [""]
    path = out / "findings.md"
    path.write_text("\n".join(md))
    return path
