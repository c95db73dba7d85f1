"""The plots of the reports (PNG, matplotlib's Agg backend): the speculative job's metrics
against the draft length L and the target budget B, and the distillation's loss curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _x(entry: dict, axis: str, sweep: str):
    if axis == "L":
        return entry["length"]
    return entry["sweep_value"] if sweep == "budget" else entry["budget"]


def _line(entry: dict) -> str:
    """Plot line of an entry: its method, with auto_shape choices a line of their own."""
    if " auto rate " in entry["label"]:
        return entry["name"] + " (auto rate)"
    return entry["name"] + (" (auto)" if " auto " in entry["label"] else "")


def plot(summary: dict, workdir: Path) -> list[str]:
    """PNG plots, one line per method: block efficiency vs L and vs B, token-rate ratio vs B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = summary["config"]["sweep"]
    entries = [e for e in summary["methods"].values() if e["length"] > 0]
    figures = [
        ("block_efficiency_vs_L.png", "L", "block_efficiency", "draft length L (draft calls)"),
        ("block_efficiency_vs_budget.png", "B", "block_efficiency", "target budget B"),
        ("token_rate_ratio_vs_budget.png", "B", "token_rate_ratio_vs_ar", "target budget B"),
    ]
    out = []
    for name, axis, key, xlabel in figures:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in dict.fromkeys(_line(e) for e in entries):
            pts = sorted(
                (_x(e, axis, sweep), e[key], e.get(key + "_ci"))
                for e in entries
                if _line(e) == method and e.get(key) is not None
            )
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            err = None
            if all(p[2] for p in pts):
                err = np.array([[y - p[2][0], p[2][1] - y] for y, p in zip(ys, pts, strict=True)])
                err = np.maximum(err, 0).T
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
        if key == "token_rate_ratio_vs_ar":
            ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="AR")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(workdir) / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(str(path))
    return out


def plot_history(history: list[dict], path: Path) -> Path | None:
    """Training loss and held-out KL / top-1 agreement against the step, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    held = [(r["step"], r["heldout_kl"], r["heldout_agree"]) for r in history
            if "heldout_kl" in r]  # fmt: skip
    if train:
        ax.plot(*zip(*train, strict=True), label="training KL (batch)", alpha=0.6)
    if held:
        steps, kl, agree = zip(*held, strict=True)
        ax.plot(steps, kl, "o-", label="held-out KL")
        ax2.plot(steps, agree, "o-", color="C2")
    ax.set_xlabel("step")
    ax.set_ylabel("KL(target || draft), nats/token")
    ax.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("held-out top-1 agreement with the target")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
