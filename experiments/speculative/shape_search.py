"""Budget-aware RSD-C shapes from measured acceptance by depth and sibling rank.

Calibration (:func:`calibration_table`) decodes a few prompts with a wide RSD-C
tree and ``probes=True`` (:mod:`rsd_jax.probes`): at the node the walk visits
at depth ``d`` it records the exact probability ``A_d(b)`` that one of the
first ``b`` children is accepted, for every ``b`` up to the calibration
width. Because the first ``b`` children of a without-replacement sample are
one themselves, a single wide tree measures every narrower branching.

Model: a tree with branching ``(b_1..b_L)`` accepts depth ``l`` given depth
``l - 1`` with probability ``A_{l-1}(b_l)``, independently, so

    E[block efficiency] = 1 + sum_l prod_{j <= l} A_{j-1}(b_j)

(depths beyond the calibrated ones reuse the deepest calibrated row). With a
draft-cost ratio ``r`` the objective can instead be the memory-bound speed-up
``eta / (1 + r L)``. :func:`best_branching` enumerates every branching vector
that scores exactly ``B`` nodes (``sum_l prod_{j<=l} b_j = B``) within the
calibrated widths and a depth cap, and returns the best under the model.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.common import strict_json
from rsd_jax import metrics


@dataclasses.dataclass(frozen=True)
class AcceptanceTable:
    """Mean ``A_d(b)`` by parent depth ``d`` (rows) and ``b = 1..K`` (columns).

    Attributes:
      accept: ``[D, K]`` mean acceptance; NaN where nothing was measured.
      count: ``[D, K]`` visited nodes behind each mean.
    """

    accept: np.ndarray
    count: np.ndarray

    def rate(self, depth: int, b: int) -> float:
        """``A_depth(b)``, falling back to the deepest row measured for ``b``."""
        if b < 1 or b > self.accept.shape[1]:
            raise ValueError(f"branching {b} outside the calibrated widths 1..{self.width}")
        rows = [d for d in range(self.accept.shape[0]) if self.count[d, b - 1] > 0]
        if not rows:
            raise ValueError(f"no calibration data for {b} siblings")
        usable = [d for d in rows if d <= depth]
        return float(self.accept[usable[-1] if usable else rows[0], b - 1])

    @property
    def width(self) -> int:
        return self.accept.shape[1]

    def to_json(self) -> dict:
        return {"accept": self.accept.tolist(), "count": self.count.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> AcceptanceTable:
        return cls(np.asarray(data["accept"], float), np.asarray(data["count"], np.int64))


def calibration_table(rank_accept_sums, rank_counts) -> AcceptanceTable:
    """Pools probe sums over rounds/prompts: ``[..., D, K]`` sums and counts -> means."""
    sums = np.asarray(rank_accept_sums, float).reshape((-1,) + np.shape(rank_accept_sums)[-2:])
    counts = np.asarray(rank_counts, np.int64).reshape(sums.shape)
    total, n = sums.sum(0), counts.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return AcceptanceTable(mean, n)


def nodes(branching) -> int:
    """Nodes of an RSD-C tree: ``sum_l prod_{j<=l} b_j``."""
    total, width = 0, 1
    for b in branching:
        width *= b
        total += width
    return total


def predicted_efficiency(table: AcceptanceTable, branching) -> float:
    """``1 + sum_l prod_{j<=l} A_{j-1}(b_j)`` under the independence model."""
    eta, reach = 1.0, 1.0
    for depth, b in enumerate(branching):
        reach *= table.rate(depth, b)
        eta += reach
    return eta


def shapes_for_budget(budget: int, max_width: int, max_depth: int) -> list[tuple[int, ...]]:
    """Every branching with exactly ``budget`` nodes, ``b <= max_width`` and ``L <= max_depth``."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    out = []

    def grow(prefix, used, width):
        if used == budget:
            out.append(tuple(prefix))
            return
        if len(prefix) == max_depth:
            return
        for b in range(1, max_width + 1):
            level = width * b
            if used + level > budget:
                break
            grow(prefix + [b], used + level, level)

    grow([], 0, 1)
    return out


def best_branching(
    table: AcceptanceTable,
    budget: int,
    max_depth: int = 8,
    draft_cost: float = 0.0,
) -> tuple[tuple[int, ...], float, list[tuple[tuple[int, ...], float]]]:
    """The branching that maximises the model's objective at exactly ``budget`` nodes.

    Args:
      table: calibrated acceptance.
      budget: target budget ``B`` (draft nodes per target call).
      max_depth: cap on ``L`` (sequential draft calls).
      draft_cost: ``r`` in ``eta / (1 + r L)``; 0 maximises block efficiency.

    Returns:
      ``(branching, objective, ranked)`` with ``ranked`` every candidate and its
      objective, best first.

    Raises:
      ValueError: no branching within the calibrated widths realises the budget.
    """
    candidates = shapes_for_budget(budget, table.width, max_depth)
    if not candidates:
        raise ValueError(
            f"no RSD-C branching with b <= {table.width} and L <= {max_depth} has exactly "
            f"{budget} nodes"
        )
    ranked = sorted(
        ((c, metrics.mbsu(predicted_efficiency(table, c), draft_cost, len(c))) for c in candidates),
        key=lambda x: (-x[1], len(x[0])),
    )
    return ranked[0][0], ranked[0][1], ranked


@dataclasses.dataclass(frozen=True)
class CostCurves:
    """Measured seconds of one forward by the number of tokens it scores, per model.

    Attributes:
      target, draft: ``{tokens: seconds}`` (at least one point each).
    """

    target: dict
    draft: dict

    def to_json(self) -> dict:
        return {k: {str(t): s for t, s in getattr(self, k).items()} for k in ("target", "draft")}

    @classmethod
    def from_json(cls, data: dict) -> CostCurves:
        return cls(*({int(t): float(s) for t, s in data[k].items()} for k in ("target", "draft")))


def curve_seconds(curve: dict, tokens: float) -> float:
    """The curve at ``tokens``: linear between measured points, flat before the first,
    extended along the last segment's slope after the last."""
    xs = np.array(sorted(curve), float)
    ys = np.array([curve[int(x)] for x in xs])
    if tokens <= xs[-1]:
        return float(np.interp(tokens, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else 0.0
    return float(ys[-1] + slope * (tokens - xs[-1]))


def level_widths(branching) -> list[int]:
    """Nodes each sequential draft call of an RSD-C round scores: 1, b_1, b_1 b_2, ..."""
    out, width = [], 1
    for b in branching:
        out.append(width)
        width *= b
    return out


def predicted_rate(table: AcceptanceTable, branching, costs: CostCurves) -> float:
    """Predicted token rate over AR's: ``eta t_T(1) / (sum_l t_D(w_l) + t_T(B + 1))``.

    One round costs a draft forward per level (``w_l`` nodes, :func:`level_widths`) and
    one target forward of the ``B`` nodes and the root; AR costs one one-token target
    forward per token. Verification, sampling and host work are left out, so this ranks
    shapes rather than promising a rate.
    """
    draft = sum(curve_seconds(costs.draft, w) for w in level_widths(branching))
    target = curve_seconds(costs.target, nodes(branching) + 1)
    eta = predicted_efficiency(table, branching)
    return eta * curve_seconds(costs.target, 1) / (draft + target)


def best_rate_branching(
    table: AcceptanceTable, budget: int, max_depth: int, costs: CostCurves
) -> tuple[tuple[int, ...], float]:
    """The branching of exactly ``budget`` nodes with the best :func:`predicted_rate`."""
    candidates = shapes_for_budget(budget, table.width, max_depth)
    if not candidates:
        raise ValueError(
            f"no RSD-C branching with b <= {table.width} and L <= {max_depth} has exactly "
            f"{budget} nodes"
        )
    rated = [(c, predicted_rate(table, c, costs)) for c in candidates]
    return max(rated, key=lambda x: (x[1], -len(x[0])))


def describe(table: AcceptanceTable) -> str:
    """Markdown table of ``A_d(b)`` with counts."""
    head = "| depth | " + " | ".join(f"b={b}" for b in range(1, table.width + 1)) + " |"
    lines = [head, "|---" * (table.width + 1) + "|"]
    for d in range(table.accept.shape[0]):
        cells = [
            "" if table.count[d, k] == 0 else f"{table.accept[d, k]:.3f} ({table.count[d, k]})"
            for k in range(table.width)
        ]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dumps(table: AcceptanceTable) -> str:
    return strict_json.dumps(table.to_json())  # unmeasured cells (NaN) as null
