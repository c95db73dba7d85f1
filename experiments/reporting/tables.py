"""The markdown tables of the speculative job, from its summary
(:func:`experiments.speculative.summary.summarize`)."""

from __future__ import annotations


def format_auto_table(summary: dict) -> str:
    """Markdown: auto_shape against the best hand-picked shape per budget (paired ratio)."""
    rows = summary.get("auto_vs_hand_picked")
    if not rows:
        return ""
    lines = [
        "| B | auto shape | auto block efficiency | best hand-picked | its block efficiency | "
        "auto / best [95% CI] |",
        "|" + "---|" * 6,
    ]
    for c in rows:
        lines.append(
            f"| {c['budget']} | {c['auto'].split(' ', 1)[-1]} | {c['auto_block_efficiency']:.3f} | "
            f"{c['best_shape']} | {c['best_block_efficiency']:.3f} | "
            f"{_fmt(c['ratio'], c['ratio_ci'])} |"
        )
    lines.append(
        "\nThe best hand-picked shape is chosen after the fact, per budget, by block efficiency "
        "(which favours it); the ratio is paired over the same prompts."
    )
    return "\n".join(lines)


def format_probe_table(summary: dict) -> str:
    """Markdown: exact expected tokens per call of walk vs traversal on the same trees."""
    rows = [e for e in summary["methods"].values() if "expected_eta_walk" in e]
    if not rows:
        return ""
    lines = [
        "| method | shape | sampled block efficiency | exact E[tokens/call], node walk | "
        "exact E[tokens/call], traversal | traversal / walk |",
        "|" + "---|" * 6,
    ]
    for e in rows:
        lines.append(
            f"| {e['name']} | {e['shape']} | "
            f"{_fmt(e['block_efficiency'], e['block_efficiency_ci'])} | "
            f"{_fmt(e['expected_eta_walk'], e['expected_eta_walk_ci'])} | "
            f"{_fmt(e.get('expected_eta_traversal'), e.get('expected_eta_traversal_ci'))} | "
            f"{_fmt(e.get('traversal_gain'), e.get('traversal_gain_ci'), 4)} |"
        )
    lines.append(
        "\nExact expectations are computed each round on the tree that was drafted (both rules "
        "see identical trees); the sampled column is what the method's own rule produced."
    )
    return "\n".join(lines)


def _fmt(x, ci=None, digits=3) -> str:
    if x is None:
        return "-"
    text = f"{x:.{digits}f}"
    if ci is not None:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def format_table(summary: dict) -> str:
    """Markdown table: one row per method (95% bootstrap intervals in brackets)."""
    head = (
        "| method | shape | L | B | block efficiency | MBSU | tok/s | tok/s ratio vs AR | "
        "acceptance by depth | ROUGE-2 (summarise) | BLEU (translate) | note |"
    )
    lines = [head, "|" + "---|" * 12]
    for e in summary["methods"].values():
        q = e["quality"]
        rouge = q.get("summarise", {})
        bleu = q.get("translate", {})
        acc = " ".join(f"{a:.2f}" for a in e["acceptance_by_depth"]) or "-"
        note = e["note"]
        if "matches_ar" in e:
            note = (note + "; " if note else "") + f"greedy output == AR: {e['matches_ar']:.2f}"
        lines.append(
            f"| {e['name']} | {e['shape']} | {e['length']} | {e['budget']} | "
            f"{_fmt(e['block_efficiency'], e['block_efficiency_ci'])} | "
            f"{_fmt(e['mbsu'], e['mbsu_ci'])} | {_fmt(e['token_rate'], e['token_rate_ci'], 2)} | "
            f"{_fmt(e['token_rate_ratio_vs_ar'], e['token_rate_ratio_vs_ar_ci'])} | {acc} | "
            f"{_fmt(rouge.get('mean'), rouge.get('ci'))} | "
            f"{_fmt(bleu.get('mean'), bleu.get('ci'), 1)} | {note} |"
        )
    auto_table = format_auto_table(summary)
    if auto_table:
        lines.append("\n" + auto_table)
    probe_table = format_probe_table(summary)
    if probe_table:
        lines.append("\n" + probe_table)
    n = max((e["num_prompts"] for e in summary["methods"].values()), default=0)
    lines.append(
        f"\n{n} prompts; r = {summary['r']:.4f}; B = draft nodes scored per target call (root "
        f"excluded); intervals: {summary['intervals']}. Quality reference: "
        f"{summary['quality_reference']}."
    )
    return "\n".join(lines)
