"""The paper's figures from the measured points (PNG, matplotlib's Agg backend).

- ``fixed_length_<regime>.png``: block efficiency and MBSU against the draft length L, one
  row per task, one line per method;
- ``fixed_budget_<regime>.png``: block efficiency, MBSU and the token rate over AR's (this
  CPU, same invocation) against the target budget B.

Error bars are the 95% bootstrap intervals over prompts (probe estimates where recorded).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from experiments.paper.measures import Point

METHOD_ORDER = ("SD", "SpecTr", "RSD-C", "RSD-S")
PANELS = {
    "length": (("eta_best", "block efficiency"), ("mbsu", "MBSU")),
    "budget": (
        ("eta_best", "block efficiency"),
        ("mbsu", "MBSU"),
        ("rate_ratio", "token rate / AR (CPU)"),
    ),
}
XLABEL = {"length": "draft length L", "budget": "target budget B"}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _ci(p: Point, key: str):
    return {"eta_best": p.eta_best_ci, "mbsu": p.mbsu_ci, "rate_ratio": p.rate_ratio_ci}[key]


def figure(points: list[Point], perspective: str, regime: str, out: Path) -> Path | None:
    """One PNG of a perspective for one regime; None when it has no point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in points if p.regime == regime and p.x is not None]
    tasks = list(dict.fromkeys(p.task for p in pts))
    if not tasks:
        return None
    panels = PANELS[perspective]
    fig, axes = plt.subplots(
        len(tasks), len(panels), figsize=(3.1 * len(panels), 2.3 * len(tasks)), squeeze=False
    )
    for row, task in enumerate(tasks):
        for col, (key, title) in enumerate(panels):
            ax = axes[row][col]
            for name in METHOD_ORDER:
                line = sorted(
                    (p for p in pts if p.task == task and p.name == name), key=lambda p: p.x
                )
                line = [p for p in line if getattr(p, key) is not None]
                if not line:
                    continue
                ys = np.array([getattr(p, key) for p in line])
                cis = np.array([_ci(p, key) for p in line])
                err = np.maximum(np.stack([ys - cis[:, 0], cis[:, 1] - ys]), 0)
                ax.errorbar(
                    [p.x for p in line], ys, yerr=err, marker="o", ms=3, capsize=2, lw=1, label=name
                )
            if key == "rate_ratio":
                ax.axhline(1.0, color="grey", lw=0.7, ls="--")
            n = max((p.n for p in pts if p.task == task), default=0)
            ax.set_title(f"{task} ({n} prompts): {title}", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            if row == len(tasks) - 1:
                ax.set_xlabel(XLABEL[perspective], fontsize=7)
    axes[0][0].legend(fontsize=6)
    what = "draft length" if perspective == "length" else "target budget"
    fig.suptitle(f"{regime}: fixed {what}", fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fixed_{perspective}_{slug(regime)}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
