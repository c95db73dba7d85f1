"""The paper's metrics (docs/algorithms.md, Metrics), as plain functions of counters."""

from __future__ import annotations


def block_efficiency(tokens_generated: float, target_calls: float) -> float:
    """``eta``: generated tokens per target call (bonus/correction token included; AR = 1)."""
    if target_calls <= 0:
        raise ValueError("block efficiency needs at least one target call")
    return tokens_generated / target_calls


def mbsu(eta: float, draft_target_ratio: float, draft_calls: int) -> float:
    """Memory-bound speed-up ``eta / (1 + r L)``.

    Args:
      eta: block efficiency.
      draft_target_ratio: ``r = params(draft) / params(target)``.
      draft_calls: ``L``, sequential draft calls per round (tree width does not enter).
    """
    if draft_target_ratio < 0 or draft_calls < 0:
        raise ValueError("r and L must be non-negative")
    return eta / (1.0 + draft_target_ratio * draft_calls)
