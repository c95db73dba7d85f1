"""The ``toy_demo`` job's settings (``experiments/configs/toy_demo.py``), checked and typed.

Accepted ranges: ``vocab >= 3`` (its context is the ids ``(1, 2)``), ``order >= 1``,
tables of at most :data:`TABLE_LIMIT` entries, ``alpha`` finite ``> 0``, ``agreement`` in
``[0, 1]`` (outside it the draft table is no distribution, and lossless methods would look
broken), ``rounds >= 1``, ``draft_cost`` finite ``>= 0``, ``seed`` in ``[0, 2**32 - 1]``,
and ``methods`` a ``+``-separated list of distinct drafting methods (no ``ar``: AR is
always the first row).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from experiments.common.checks import SEED_MAX, Checks, is_real
from rsd_jax import methods

MIN_VOCAB = 3  # the demo drafts after the context (1, 2)
TABLE_LIMIT = 2**24  # entries of one n-gram table, (vocab + 1) ** (order - 1) * vocab


@dataclasses.dataclass(frozen=True)
class Settings:
    """A checked ``toy_demo`` config.

    Attributes:
      vocab, order: the n-gram tables' vocabulary and order.
      alpha: Dirichlet concentration of the tables (small = peaked).
      agreement: the share of the target's table in the draft's, in [0, 1].
      rounds: independent rounds per method.
      draft_cost: ``r`` of MBSU.
      seed: tables and rounds.
      methods: the drafting methods, parsed (:func:`rsd_jax.methods.parse`).
      recorded: the config's keys and values, as ``summary.json`` records them.
    """

    vocab: int
    order: int
    alpha: float
    agreement: float
    rounds: int
    draft_cost: float
    seed: int
    methods: tuple[methods.Method, ...]
    recorded: Mapping[str, Any] = dataclasses.field(compare=False, repr=False)


def from_config(config) -> Settings:
    """Checks every key (all bad ones in one line) and returns the :class:`Settings`.

    Raises:
      experiments.common.checks.ConfigError: a value out of range.
    """
    c = Checks(config)
    c.int_in("vocab", MIN_VOCAB)
    c.int_in("order", 1)
    if not c.errors and (config.vocab + 1) ** (config.order - 1) * config.vocab > TABLE_LIMIT:
        c.fail("order", f"small enough for (vocab + 1) ** (order - 1) * vocab <= {TABLE_LIMIT}")
    c.real_above_zero("alpha", "a finite number > 0 (the Dirichlet concentration)")
    g = config.agreement
    if not (is_real(g) and 0 <= g <= 1):
        c.fail("agreement", "in [0, 1] (the draft mixes the target's table with another)")
    c.int_in("rounds", 1)
    c.real_at_least_zero("draft_cost")
    c.int_in("seed", 0, SEED_MAX)
    items = c.items("methods")
    if not items and not c.errors:
        c.fail("methods", "a '+'-separated list of methods such as sd:3+rsd_s:2x3")
    parsed = []
    for item in items:
        try:
            method = methods.parse(item)
        except ValueError as e:
            c.errors.append(f"'methods': {e}")
            continue
        if method.spec.depth == 0:
            c.fail("methods", "drafting methods only (AR is always the first row)")
        parsed.append(method)
    c.raise_if_any()
    return Settings(
        config.vocab, config.order, float(config.alpha), float(config.agreement),
        config.rounds, float(config.draft_cost), config.seed, tuple(parsed),
        types.MappingProxyType(config.to_dict()),
    )  # fmt: skip
