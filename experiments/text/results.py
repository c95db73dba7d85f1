"""What a text generation returns: its completions, their statistics, the checked request."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rsd_jax import methods, transforms

FINISH_REASONS = ("eos", "length", "stop")


@dataclasses.dataclass(frozen=True)
class Stats:
    """What one generation (or a batch, summed) cost and how the draft fared.

    Attributes:
      new_tokens: tokens generated (after EOS and stop cuts).
      seconds: wall-clock, prefill included (a batch's rows share one figure).
      target_calls: rounds, one target call each.
      draft_calls: sequential draft calls.
      accepted_hist: rounds by number of accepted draft tokens ``0..L``.
    """

    new_tokens: int
    seconds: float
    target_calls: int
    draft_calls: int
    accepted_hist: tuple[int, ...]

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tokens_per_call(self) -> float:
        """Generated tokens per target call (block efficiency; AR = 1)."""
        return self.new_tokens / self.target_calls if self.target_calls else float("nan")

    @property
    def acceptance_by_depth(self) -> list[float | None]:
        """``[d-1]``: of the rounds that accepted ``d - 1`` draft tokens, the share that
        accepted a ``d``-th (None where no round got that far)."""
        hist = np.asarray(self.accepted_hist, float)
        at_least = hist[::-1].cumsum()[::-1]
        return [
            None if at_least[d - 1] == 0 else float(at_least[d] / at_least[d - 1])
            for d in range(1, len(hist))
        ]

    @staticmethod
    def total(parts: Sequence[Stats], seconds: float) -> Stats:
        """The sum of ``parts`` (same method) over ``seconds`` of wall-clock."""
        width = max((len(p.accepted_hist) for p in parts), default=1)
        hist = np.zeros(width, np.int64)
        for p in parts:
            hist[: len(p.accepted_hist)] += p.accepted_hist
        return Stats(
            sum(p.new_tokens for p in parts), seconds, sum(p.target_calls for p in parts),
            sum(p.draft_calls for p in parts), tuple(int(x) for x in hist),
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Completion:
    """One prompt's generation.

    Attributes:
      text: the generated text (special tokens removed; cut before a stop string).
      tokens: the generated ids (through the EOS or the token that completed a stop).
      finish_reason: ``'eos'``, ``'length'`` (the token budget or the context) or ``'stop'``.
      prompt_tokens: the prompt's length in tokens.
      stats: :class:`Stats` of this row (``seconds``: its batch's).
    """

    text: str
    tokens: tuple[int, ...]
    finish_reason: str
    prompt_tokens: int
    stats: Stats


@dataclasses.dataclass(frozen=True)
class Request:
    """A checked generation request (what :meth:`TextGenerator.request` returns)."""

    method: methods.Method
    sampling: transforms.SamplingParams
    max_new_tokens: int
    stop: tuple[str, ...]
    seed: int
