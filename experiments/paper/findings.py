"""The paper's findings checked against the measured points: markdown for docs/.

Each finding becomes a table of paired comparisons (:mod:`experiments.paper.measures`) and
a verdict by a rule fixed in advance (:func:`tally`):

- ``reproduced``: the claimed winner is ahead (interval above 1) in at least half of the
  cells and behind in none;
- ``contradicted``: it is behind in more cells than it is ahead;
- ``tie``: every cell with enough prompts is a tie;
- ``mixed``: anything else; ``too few prompts``: no cell has :data:`MIN_PROMPTS`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from experiments.paper import load
from experiments.paper import measures as ms

RIVALS = ("SD", "SpecTr", "RSD-C")


def tally(verdicts) -> str:
    c = Counter(verdicts)
    decided = c[">"] + c["<"] + c["tie"]
    if decided == 0:
        return "too few prompts"
    if c["<"] == 0 and c[">"] * 2 >= decided:
        return "reproduced"
    if c["<"] > c[">"]:
        return "contradicted"
    if c[">"] == 0 and c["<"] == 0:
        return "tie"
    return "mixed"


def fmt(c: ms.Comparison | None) -> str:
    if c is None:
        return "-"
    return f"{c.ratio:.3f} [{c.ci[0]:.3f}, {c.ci[1]:.3f}] {c.verdict}"


def _counts(verdicts) -> str:
    c = Counter(verdicts)
    return f"{c['>']} ahead, {c['tie']} ties, {c['<']} behind, {c['few']} with too few prompts"


def _verdicts(pairs, rule=None) -> str:
    """The rule's verdict over the per-task cells, then over the pooled ones (:data:`ALL`);
    ``pairs`` are ``(task, verdict)``."""
    rule = rule or tally
    out = []
    for name, keep in (("per task", lambda t: t != load.ALL), ("pooled", lambda t: t == load.ALL)):
        vs = [v for t, v in pairs if keep(t)]
        if vs:
            out.append(f"{name}: {rule(vs)} ({_counts(vs)})")
    return "; ".join(out) or "no cells"


def _by(points, **want) -> list[ms.Point]:
    return [p for p in points if all(getattr(p, k) == v for k, v in want.items())]


def fixed_length(wd: load.Workdir, points) -> tuple[list[str], str]:
    """Finding 1: at fixed L, RSD-S (and RSD-C) beat SD and SpecTr."""
    lines = [
        "| task | L | RSD-S / SD | RSD-S / SpecTr | RSD-C / SD | RSD-C / SpecTr |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    for task in wd.task_names:
        for length in sorted({p.x for p in _by(points, task=task)}):
            at = {p.name: p.text for p in _by(points, task=task, x=length)}
            cells = [
                ms.compare_eta(wd, at[a], at[b], task) if a in at and b in at else None
                for a, b in (
                    ("RSD-S", "SD"),
                    ("RSD-S", "SpecTr"),
                    ("RSD-C", "SD"),
                    ("RSD-C", "SpecTr"),
                )
            ]
            verdicts += [(task, c.verdict) for c in cells if c is not None]
            lines.append(f"| {task} | {length} | " + " | ".join(fmt(c) for c in cells) + " |")
    return lines, _verdicts(verdicts)


def fixed_budget(wd: load.Workdir, points) -> tuple[list[str], str, str]:
    """Finding 2: at fixed B RSD-S wins most cells, and its lead grows with B."""
    lines = [
        "| task | B | best rival | RSD-S / best rival | RSD-S vs each rival |",
        "|---|---|---|---|---|",
    ]
    cell_verdicts, growth = [], []
    for task in wd.task_names:
        leads = {}
        for budget in sorted({p.x for p in _by(points, task=task)}):
            at = {p.name: p for p in _by(points, task=task, x=budget)}
            if "RSD-S" not in at:
                continue
            rivals = [at[n] for n in RIVALS if n in at]
            if not rivals:
                continue
            comps = [ms.compare_eta(wd, at["RSD-S"].text, r.text, task) for r in rivals]
            best = max(rivals, key=lambda r: r.eta_best)
            lead = ms.compare_eta(wd, at["RSD-S"].text, best.text, task)
            leads[budget] = (at["RSD-S"].text, best.text)
            vs = [c.verdict for c in comps]
            cell = "few" if "few" in vs else "<" if "<" in vs else "tie"
            cell = ">" if set(vs) == {">"} else cell
            cell_verdicts.append((task, cell))
            each = ", ".join(f"{r.name} {c.verdict}" for r, c in zip(rivals, comps, strict=True))
            lines.append(f"| {task} | {budget} | {best.name} {best.shape} | {fmt(lead)} | {each} |")
        if len(leads) >= 2:
            lo, hi = min(leads), max(leads)
            texts = [*leads[hi], *leads[lo]]
            m = ms.eta_matrix(wd, texts, task)
            if len(m):
                val, ci = ms.paired_stat(
                    m, lambda e: (e[..., 0] / e[..., 1]) / (e[..., 2] / e[..., 3])
                )
                v = ms.verdict(ci, len(m))
                growth.append((task, v))
                lines.append(
                    f"| {task} | lead at B={hi} over lead at B={lo} | | "
                    f"{val:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] {v} | |"
                )
    return lines, _verdicts(cell_verdicts), _verdicts(growth)


def sd_vs_rsd_c(wd: load.Workdir, points, budgets=(6, 10)) -> tuple[list[str], str]:
    """Finding 3: plain SD can beat RSD-C at small budgets when draft and target agree."""
    lines = ["| task | B | SD / RSD-C | SD acceptance at depth 1 |", "|---|---|---|---|"]
    verdicts = []
    for task in wd.task_names:
        for budget in budgets:
            at = {p.name: p for p in _by(points, task=task, x=budget)}
            if "SD" not in at or "RSD-C" not in at:
                continue
            c = ms.compare_eta(wd, at["SD"].text, at["RSD-C"].text, task)
            verdicts.append((task, c.verdict))
            acc = at["SD"].acceptance_by_depth
            first = f"{acc[0]:.2f}" if acc else "-"
            lines.append(f"| {task} | {budget} | {fmt(c)} | {first} |")
    return lines, _verdicts(verdicts, _sd_somewhere)


def _sd_somewhere(verdicts) -> str:
    c = Counter(verdicts)
    if not c[">"] + c["<"] + c["tie"]:
        return "too few prompts"
    return "reproduced (SD ahead somewhere)" if c[">"] else "not reproduced (SD ahead nowhere)"


def quality(wd: load.Workdir, texts, refs_by_task=None) -> tuple[list[str], str]:
    """Finding 4: quality (ROUGE-2 / BLEU against the ShareGPT reply) equals AR's.

    A row is flagged when its paired sign-flip test (:func:`measures.sign_flip_p`) gives
    p < 0.05; under unchanged quality about 5% of rows are, and more so together because
    every row of a task shares the same AR outputs. The verdict: consistent when at most
    ``max(1, 2 x 5%)`` of the rows are flagged."""
    lines = [
        "| task | method | metric | method - AR [bootstrap 95%] | sign-flip p | prompts |",
        "|---|---|---|---|---|---|",
    ]
    flagged = total = 0
    for task in wd.task_names:
        for text in texts:
            refs = None if refs_by_task is None else refs_by_task.get(task, {})
            q = ms.quality_gap(wd, text, task, refs)
            if q is None:
                continue
            total += 1
            flag = q["p"] < 0.05
            flagged += flag
            lines.append(
                f"| {task} | {text} | {q['metric']} | {q['diff']:+.4f} "
                f"[{q['ci'][0]:+.4f}, {q['ci'][1]:+.4f}] | {q['p']:.3f}{' *' if flag else ''} | "
                f"{q['n']} |"
            )
    if not total:
        return lines, "no scored prompts"
    expected = 0.05 * total
    verdict = (
        "consistent with unchanged quality"
        if flagged <= max(1, 2 * expected)
        else "more than chance: look at the flagged rows"
    )
    largest = max(int(r.split("|")[-2]) for r in lines[2:])
    if largest <= 4:  # 2 / 2**4 = 0.125: the test cannot reject
        return lines, (
            f"too few prompts to test: at most {largest} per task, where the smallest "
            "possible sign-flip p is 0.125"
        )
    note = ""
    return (
        lines,
        f"{flagged} of {total} rows with p < 0.05 (about {expected:.1f} by chance){note}: "
        + verdict,
    )


def table_shapes(wd: load.Workdir, points) -> list[str]:
    """The paper's Table shapes on this pair, per task, beside the paper's numbers."""
    tasks = wd.task_names
    head = "| shape | L | B | paper (XSum, T=0.3) | " + " | ".join(tasks) + " |"
    lines = [head, "|---|---|---|---|" + "---|" * len(tasks)]
    for text, paper in load.PAPER_TABLE.items():
        row = _by(points, text=text)
        if not row:
            continue
        cells = []
        for task in tasks:
            p = next((q for q in row if q.task == task), None)
            ci = p and p.eta_best_ci
            cells.append("-" if p is None else f"{p.eta_best:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]")
        lines.append(
            f"| {row[0].name} {row[0].shape} | {row[0].length} | {row[0].budget} | {paper:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    for task in tasks:
        ours = [(load.PAPER_TABLE[p.text], p.eta_best) for p in points if p.task == task]
        if len(ours) >= 3:
            a, b = np.array(ours).T
            rho = np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]
            lines.append(
                f"\nRank correlation (Spearman) of the paper's order with ours on {task}: {rho:.2f}"
            )
    return lines


def _holds(verdicts) -> str:
    c = Counter(verdicts)
    decided = c[">"] + c["<"] + c["tie"]
    if not decided:
        return "too few prompts"
    return f"holds in {c['>'] + c['tie']} of {decided} cells"


def auto_shapes(
    wd: load.Workdir, auto_points, hand_points, every_point
) -> tuple[list[str], str, str]:
    """``auto_shape`` against the best hand-picked shape of its budget (block efficiency),
    and the ``auto_rate`` shape against the fastest hand-picked method (token rate on this
    machine). The best hand-picked is chosen after the fact by point estimate, which
    favours it; the auto-rate shape is the winner of its race on the calibration prompts
    (:mod:`experiments.speculative.race`), or in a workdir from before the race the shape
    the cost model ranked first; either was chosen before any evaluated prompt ran.
    ``hand_points``: the fixed-budget sweep's; ``every_point``: every hand-picked point of
    every perspective (for the fastest)."""
    table, costs = load.calibration(wd)
    lines = [
        "| task | B | auto shape | best hand-picked | auto / best (block efficiency) |",
        "|---|---|---|---|---|",
    ]
    eff = []
    for p in auto_points:
        if " auto rate " in p.label:
            continue
        rivals = [q for q in hand_points if q.task == p.task and q.x == p.x]
        if not rivals:
            continue
        best = max(rivals, key=lambda q: q.eta_best)
        c = ms.compare_eta(wd, p.text, best.text, p.task)
        same = " (same shape)" if best.text == p.text else ""
        eff.append((p.task, c.verdict))
        lines.append(
            f"| {p.task} | {p.x} | {p.shape} | {best.name} {best.shape}{same} | {fmt(c)} |"
        )
    rate_lines, rate = [], []
    rated = [p for p in auto_points if " auto rate " in p.label]
    if rated and costs is not None:
        rate_lines = [
            "",
            "| task | auto rate shape (predicted x AR) | fastest hand-picked (x AR) | "
            "auto rate / fastest (token rate) |",
            "|---|---|---|---|",
        ]
        for task in wd.task_names:
            mine = [p for p in rated if p.task == task]
            hand = [q for q in every_point if q.task == task and q.rate_ratio]
            if not mine or not hand:
                continue
            raced = [p for p in mine if " auto rate raced " in p.label]
            pick = raced[0] if raced else max(mine, key=lambda p: _predicted(table, p.text, costs))
            best = max(hand, key=lambda q: q.rate_ratio)
            c = ms.compare_rate(wd, pick.text, best.text, task)
            rate.append((task, c.verdict))
            how = ", raced" if raced else ""
            rate_lines.append(
                f"| {task} | {pick.shape} ({_predicted(table, pick.text, costs):.2f}{how}) | "
                f"{best.name} {best.shape} ({best.rate_ratio:.2f}) | {fmt(c)} |"
            )
    return lines + rate_lines, _verdicts(eff, _holds), _verdicts(rate, _holds)


def _predicted(table, text: str, costs) -> float:
    from experiments.speculative import shape_search

    branching = tuple(int(b) for b in text.split(":")[1].split("-"))
    return shape_search.predicted_rate(table, branching, costs)
