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


SPECULATIVE_DEFAULTS = dict(
    job="speculative",
    sweep="none",  # none | length | budget
    method="ar+sd:2+mrs:3x2+spectr:3x2+rsd_c:2-2+rsd_s:3x2",
    target="qwen2.5-coder-1.5b",  # preset name or local path (.gguf / safetensors dir)
    draft="qwen2.5-coder-0.5b",
    draft_vocab=0,  # N > 0: the draft scores only its N most frequent ids + specials (exact)
    dtype="float32",
    scan_layers=False,  # blocks under one scan: faster compiles, slower calls on CPU
    dataset="humaneval+chat+summarise+translate+shakespeare",
    num_prompts=5,  # in all, spread round-robin over the datasets in order
    max_new_tokens=32,
    max_prompt_tokens=128,  # user text longer than this keeps its head and tail
    chat_template="auto",  # auto (chat tasks) | always | never
    shakespeare_lines=8,
    temperature=-1.0,  # -1: the paper's per-dataset setting (0.3 summarise/translate, else 1)
    top_p=-1.0,  # -1: the paper's per-dataset setting (1.0 summarise/translate, else 0.95)
    seed=0,
    lengths="2+3+4+5",  # sweep=length
    width=3,  # sweep=length: K = W = width, RSD-C width-1-..-1
    budgets="6+10+14+21+30",  # sweep=budget
    sd_max_length=8,  # sweep=budget: SD chain L = min(B, sd_max_length)
    shapes="",  # sweep=budget: overrides, '+'-separated B@name:shape
    shape="",  # sweep=budget: "auto" adds RSD-C shapes chosen from calibration per budget
    calibration_prompts=4,  # shape=auto: extra prompts (never evaluated) decoded to calibrate
    calibration_tokens=64,  # shape=auto: tokens generated per calibration prompt
    calibration_shape="4-4",  # shape=auto: wide RSD-C tree measuring acceptance by rank
    auto_max_depth=6,  # shape=auto: cap on L
    auto_draft_cost=0.0,  # shape=auto: r in eta / (1 + r L); 0 maximises block efficiency
    probes=False,  # exact expected tokens/call of walk vs traversal on the same trees, ranks
    bootstrap=1000,  # bootstrap resamples for confidence intervals (over prompts)
    progress=True,
    plots=True,
    mesh="",  # DATAxMODEL devices, e.g. 1x8 (data 1: one prompt at a time); "" = one device
)


def speculative(arg: str | None, **overrides) -> ml_collections.ConfigDict:
    """A config of the ``speculative`` job: :data:`SPECULATIVE_DEFAULTS` updated by the
    config module's ``overrides``, then by the command line's ``k=v`` string ``arg``.

    Values are range-checked by :func:`experiments.validate.validate`, which the runner
    calls before it loads or writes anything."""
    unknown = set(overrides) - set(SPECULATIVE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown speculative config keys {sorted(unknown)}")
    return build(SPECULATIVE_DEFAULTS | overrides, arg)
