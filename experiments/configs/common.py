"""Shared config plumbing: typed ``k=v`` overrides, unknown keys rejected, locked configs.

Every config module defines ``get_config(arg=None)`` and calls :func:`build`
with its typed defaults; ``arg`` is the text after ``:`` in
``--config=experiments/configs/NAME.py:k=v,k=v``. A value's type is that of
its default (bools accept true/false/1/0). Lists of methods use ``+`` between
items because ``,`` separates keys.
"""

from __future__ import annotations

import ml_collections

_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def _cast(key: str, text: str, default):
    if isinstance(default, bool):
        low = text.lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise ValueError(f"config key {key!r} expects a bool (true/false), got {text!r}")
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError(
            f"config key {key!r} expects {type(default).__name__}, got {text!r}"
        ) from None


def build(defaults: dict, arg: str | None) -> ml_collections.ConfigDict:
    """Returns a locked ConfigDict of ``defaults`` updated by the ``k=v,...`` string ``arg``.

    Raises:
      ValueError: unknown key (the valid keys are listed), malformed pair, or a
        value of the wrong type.
    """
    config = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"config override {item!r} is not of the form key=value")
        if key not in defaults:
            raise ValueError(f"unknown config key {key!r}; valid keys: {sorted(defaults)}")
        config[key] = _cast(key, value.strip(), defaults[key])
    config.lock()
    return config
