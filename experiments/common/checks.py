"""Config checks that end in one line: every bad key named with its value and accepted range.

Each job's ``settings.from_config`` (:mod:`experiments.speculative.settings`,
:mod:`experiments.distill.settings`, :mod:`experiments.toy_demo.settings`) runs a
:class:`Checks` over its config before anything is loaded or written, e.g.::

    bad config: 'max_new_tokens' must be an integer >= 1, got 0; 'seed' must be an
    integer in [0, 4294967295], got -1

and only then builds the job's typed settings, which the rest of the job takes.
"""

from __future__ import annotations

import math

SEED_MAX = 2**32 - 1


class ConfigError(ValueError):
    """A config value outside its accepted range (the message names key, value and range)."""


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_real(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class Checks:
    """Collects one message per bad key of ``config``."""

    def __init__(self, config):
        self.config = config
        self.errors: list[str] = []

    def fail(self, key: str, accepted: str) -> None:
        self.errors.append(f"{key!r} must be {accepted}, got {self.config[key]!r}")

    def int_in(self, key: str, lo: int, hi: int | None = None) -> None:
        value = self.config[key]
        if not (is_int(value) and value >= lo and (hi is None or value <= hi)):
            self.fail(key, f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]")

    def real_at_least_zero(self, key: str) -> None:
        value = self.config[key]
        if not (is_real(value) and math.isfinite(value) and value >= 0):
            self.fail(key, "a finite number >= 0")

    def real_above_zero(self, key: str, accepted: str = "a finite number > 0") -> None:
        value = self.config[key]
        if not (is_real(value) and math.isfinite(value) and value > 0):
            self.fail(key, accepted)

    def text(self, key: str, accepted: str) -> None:
        """A non-empty string (e.g. a preset name or a path)."""
        if not (isinstance(self.config[key], str) and self.config[key].strip()):
            self.fail(key, accepted)

    def choice(self, key: str, options) -> None:
        if self.config[key] not in options:
            self.fail(key, "one of " + ", ".join(repr(o) for o in options))

    def boolean(self, key: str) -> None:
        if not isinstance(self.config[key], bool):
            self.fail(key, "true or false")

    def items(self, key: str) -> list[str]:
        """The ``+``-separated items of a string key; a repeated item is an error."""
        value = self.config[key]
        if not isinstance(value, str):
            self.fail(key, "a '+'-separated string")
            return []
        items = [x.strip() for x in value.split("+") if x.strip()]
        repeated = sorted({x for x in items if items.count(x) > 1})
        if repeated:
            self.fail(
                key, f"a '+'-separated list without repeats (repeated: {', '.join(repeated)})"
            )
        return items

    def ints(self, key: str, minimum: int = 1) -> None:
        """A non-empty ``+``-separated list of distinct integers ``>= minimum``."""
        items = self.items(key)
        accepted = f"'+'-separated distinct integers >= {minimum}"
        try:
            values = [int(x) for x in items]
        except ValueError:
            self.fail(key, accepted)
            return
        if not values or min(values) < minimum:
            self.fail(key, accepted)
        elif len(set(values)) < len(values) and len(set(items)) == len(items):  # 2+02
            self.fail(key, accepted)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ConfigError("bad config: " + "; ".join(self.errors))


def plus_items(text: str) -> tuple[str, ...]:
    """The ``+``-separated items of a checked config string, stripped, empties dropped."""
    return tuple(x.strip() for x in text.split("+") if x.strip())
