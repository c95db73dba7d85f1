"""Token rate on this machine (trees against the best chain) and a labelled projection to
an accelerator from a cost curve of one forward against the number of scored tokens.

**Measured** (:func:`trees_vs_chain`): per task and budget, the best tree method's token
rate over the best SD chain's (any L the sweeps ran), each as a ratio to the AR of its own
invocation, paired by prompt (:func:`experiments.paper.measures.compare_rate`).

**Projected** (:func:`projected_speedup`), a model and not a measurement: a round costs ``L``
draft forwards, each scoring ``B / L`` tokens on average, at ``rho`` times the target's cost
for as many tokens, plus one target forward of ``B + 1`` tokens; AR costs one target
forward of one token per token, so the speed-up is ``eta * t(1) / (L rho t(B/L) + t(B+1))``.
Verification, sampling and host work are left out. The default curve is the issue's
H100 measurement of a 1.7B model with plain JAX (forward milliseconds by scored tokens).
"""

from __future__ import annotations

import numpy as np

from experiments.paper import measures as ms
from experiments.paper.load import ALL
from experiments.speculative import shape_search

H100_1P7B_MS = {1: 6.15, 8: 5.90, 16: 5.96, 32: 6.68, 64: 6.84}
H100_7B_MS = {1: 17.9, 64: 20.1}
# rho: a draft forward over a target forward of as many tokens. 0.1 and 0.3 follow weight
# bytes (a paper-regime draft, the 0.5B); 0.8 follows layer counts (24 vs 28), what a 0.5B
# draft costs where per-layer launch overhead dominates, as the H100 curve's 6 ms for a
# 1.7B forward (about 1 ms of weight reads) suggests.
DRAFT_RATIOS = (0.1, 0.3, 0.8)
TREES = ("SpecTr", "RSD-C", "RSD-S")


def forward_ms(curve: dict[int, float], tokens: float) -> float:
    """The curve at ``tokens`` (:func:`experiments.speculative.shape_search.curve_seconds`)."""
    return shape_search.curve_seconds(curve, tokens)


def projected_speedup(eta: float, length: int, budget: int, curve, rho: float) -> float:
    """Projected token rate over AR of a method with block efficiency ``eta``."""
    if length == 0:
        return 1.0
    draft = length * rho * forward_ms(curve, budget / length)
    return eta * forward_ms(curve, 1) / (draft + forward_ms(curve, budget + 1))


def model_check(points, costs) -> list[str]:
    """Markdown rows: the cost model of the projection applied to this machine's measured
    forward costs (``costs.json`` of an ``auto_rate`` run), against the token rate measured
    here, pooled over the tasks: how optimistic the model is, before trusting it elsewhere."""
    lines = [
        "| method | predicted x AR | measured x AR | measured / predicted |",
        "|---|---|---|---|",
    ]
    ratios, seen = [], set()
    for p in points:
        if p.task != ALL or not p.rate_ratio or p.length == 0 or p.text in seen:
            continue
        seen.add(p.text)
        draft = p.length * forward_ms(costs.draft, p.budget / p.length)
        pred = (
            p.eta_best
            * forward_ms(costs.target, 1)
            / (draft + forward_ms(costs.target, p.budget + 1))
        )
        ratios.append(p.rate_ratio / pred)
        lines.append(f"| {p.name} {p.shape} | {pred:.2f} | {p.rate_ratio:.2f} | {ratios[-1]:.2f} |")
    if ratios:
        lines.append(
            f"\nMeasured over predicted: median {np.median(ratios):.2f}, range "
            f"{min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} methods."
        )
    return lines


def trees_vs_chain(wd, points, chains=None, others=()) -> tuple[list[str], list[str]]:
    """Markdown rows: per (task, B) of the fixed-budget ``points`` the best tree over the
    best chain in token rate, and the (task, B) cells where a tree is ahead with its
    interval above 1. The chains are the SD points of ``chains`` (default ``points``):
    pass every perspective's so that the best L of all counts. ``others``: trees of the
    other perspectives (the Table's shapes, the fixed-length sweep, the calibrated
    shapes, budgets below 6 among them); per task the fastest of them gets a row too."""
    chains = points if chains is None else chains
    lines = [
        "| task | B | best tree (x AR) | best chain (x AR) | tree / chain |",
        "|---|---|---|---|---|",
    ]
    wins = []
    for task in wd.task_names:
        sds = [p for p in chains if p.task == task and p.name == "SD" and p.rate_ratio]
        if not sds:
            continue
        chain = max({p.text: p for p in sds}.values(), key=lambda p: p.rate_ratio)
        for budget in sorted({p.x for p in points if p.task == task and p.name in TREES}):
            trees = [
                p
                for p in points
                if p.task == task and p.x == budget and p.name in TREES and p.rate_ratio
            ]
            if not trees:
                continue
            tree = max(trees, key=lambda p: p.rate_ratio)
            c = ms.compare_rate(wd, tree.text, chain.text, task)
            lines.append(
                f"| {task} | {budget} | {tree.name} {tree.shape} ({tree.rate_ratio:.2f}) | "
                f"SD L={chain.length} ({chain.rate_ratio:.2f}) | {_fmt(c)} |"
            )
            if c is not None and c.verdict == ">":
                wins.append(f"{task}, B={budget}: {tree.name} {tree.shape}")
        rest = [
            p
            for p in others
            if p.task == task and p.name in TREES and p.rate_ratio and not _is_chain(p.text)
        ]
        if rest:
            tree = max(rest, key=lambda p: p.rate_ratio)
            c = ms.compare_rate(wd, tree.text, chain.text, task)
            lines.append(
                f"| {task} | {tree.budget} (other perspectives) | {tree.name} {tree.shape} "
                f"({tree.rate_ratio:.2f}) | SD L={chain.length} ({chain.rate_ratio:.2f}) | "
                f"{_fmt(c)} |"
            )
            if c is not None and c.verdict == ">":
                wins.append(f"{task}, B={tree.budget}: {tree.name} {tree.shape}")
    return lines, wins


def projection(points, chains=(), curve=None, rhos=DRAFT_RATIOS) -> list[str]:
    """Markdown rows: per task and budget, the projected speed-up of the best method at
    that budget, then of the best SD chain of any L in ``chains``."""
    curve = curve or H100_1P7B_MS
    head = "| task | B | " + " | ".join(f"best at rho={r} (x AR)" for r in rhos) + " |"
    lines = [head, "|---|---|" + "---|" * len(rhos)]

    def best(candidates, rho):
        rated = [
            (projected_speedup(p.eta_best, p.length, p.budget, curve, rho), p) for p in candidates
        ]
        value, p = max(rated, key=lambda x: x[0])
        return f"{p.name} {p.shape}: {value:.2f}"

    for task in dict.fromkeys(p.task for p in points):
        for budget in sorted({p.x for p in points if p.task == task}):
            at = [p for p in points if p.task == task and p.x == budget]
            lines.append(f"| {task} | {budget} | " + " | ".join(best(at, r) for r in rhos) + " |")
        sds = [p for p in chains if p.task == task and p.name == "SD"]
        if sds:
            lines.append(f"| {task} | any chain | " + " | ".join(best(sds, r) for r in rhos) + " |")
    return lines


def _is_chain(text: str) -> bool:
    """An RSD-C branching of all ones (``rsd_c:1-1-1``): a chain drafted as a tree."""
    name, _, shape = text.partition(":")
    return name == "rsd_c" and set(shape.split("-")) == {"1"}


def _fmt(c) -> str:
    if c is None:
        return "-"
    return f"{c.ratio:.3f} [{c.ci[0]:.3f}, {c.ci[1]:.3f}] {c.verdict}"
