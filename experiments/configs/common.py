"""Shared config plumbing: typed ``k=v`` overrides, unknown keys rejected, locked configs.

Every config module defines ``get_config(arg=None)`` and calls :func:`build`
with its typed defaults; ``arg`` is the text after ``:`` in
``--config=experiments/configs/NAME.py:k=v,k=v``. A value's type is that of
its default (bools accept true/false/1/0). Lists of methods use ``+`` between
items because ``,`` separates keys.

The ``speculative`` job's keys are listed by section in :data:`SPECULATIVE_SECTIONS`
(what to run, models, prompts, sampling, sweeps, auto shapes, report). Sections are for
reading only: keys stay flat (``temperature=0``, not ``sampling.temperature=0``), so every
command line, ``config.json`` of a workdir and ``summary.json`` keeps one level of keys.
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


def build(
    defaults: dict, arg: str | None, renamed: dict[str, str] | None = None
) -> ml_collections.ConfigDict:
    """Returns a locked ConfigDict of ``defaults`` updated by the ``k=v,...`` string ``arg``.

    ``renamed`` maps former key names to what to write instead (named in the error).

    Raises:
      ValueError: unknown key (a renamed one names its replacement; otherwise the valid
        keys are listed), malformed pair, or a value of the wrong type.
    """
    config = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"config override {item!r} is not of the form key=value")
        if key not in defaults and key in (renamed or {}):
            raise ValueError(f"config key {key!r} was renamed: write {renamed[key]}")
        if key not in defaults:
            raise ValueError(f"unknown config key {key!r}; valid keys: {sorted(defaults)}")
        config[key] = _cast(key, value.strip(), defaults[key])
    config.lock()
    return config


# The keys of the ``speculative`` job, by section. Overrides stay flat (``k=v``, no section
# prefix): every key name is unique across sections, and workdirs store the flat config.
SPECULATIVE_SECTIONS = {
    "what to run": dict(
        job="speculative",
        sweep="none",  # none | length | budget
        method="ar+sd:2+mrs:3x2+spectr:3x2+rsd_c:2-2+rsd_s:3x2",
    ),
    "models": dict(
        target="qwen2.5-coder-1.5b",  # preset name or local path (.gguf / safetensors dir)
        draft="qwen2.5-coder-0.5b",
        draft_vocab=0,  # N > 0: the draft scores only its N most frequent ids + specials (exact)
        # auto: the CPU kernels' layouts where they run (tiled target, int8 draft, float32),
        # float weights in bfloat16 on accelerators (models.arch.quantize.auto_layout)
        target_weights="auto",  # auto | float | tiled (float32 in tiles; the same model)
        draft_weights="auto",  # auto | float | tiled | int8 (a coarser, cheaper draft; exact)
        dtype="auto",  # auto | float32 | bfloat16
        scan_layers=False,  # blocks under one scan: faster compiles, slower calls on CPU
        mesh="",  # DATAxMODEL devices of every process, e.g. 1x8 or 2x4; "" = one device
    ),
    "prompts": dict(
        dataset="humaneval+chat+summarise+translate+shakespeare",
        num_prompts=5,  # in all, spread round-robin over the datasets in order
        batch=1,  # prompts decoded together (same sampling); a multiple of the mesh's data axis
        max_new_tokens=32,
        max_prompt_tokens=128,  # user text longer than this keeps its head and tail
        chat_template="auto",  # auto (chat tasks) | always | never
        shakespeare_lines=8,
    ),
    "sampling": dict(
        # paper: the paper's per-dataset setting (T=0.3, top-p 1 for summarise/translate;
        # T=1, top-p 0.95 otherwise); fixed: temperature and top_p below for every dataset
        sampling="paper",
        temperature=1.0,  # sampling=fixed: 0 = greedy
        top_p=1.0,  # sampling=fixed: nucleus mass in (0, 1]; 1 = off
        seed=0,
    ),
    "sweeps": dict(
        lengths="2+3+4+5",  # sweep=length
        width=3,  # sweep=length: K = W = width, RSD-C width-1-..-1
        budgets="6+10+14+21+30",  # sweep=budget
        sd_max_length=8,  # sweep=budget: SD chain L = min(B, sd_max_length)
        shape_overrides="",  # sweep=budget: '+'-separated B@name:shape replacing the table's
    ),
    "auto shapes": dict(
        auto_shape=False,  # sweep=budget: also run the RSD-C shape calibration predicts best
        calibration_prompts=4,  # extra prompts (never evaluated) decoded to calibrate
        calibration_tokens=64,  # tokens generated per calibration prompt
        calibration_shape="4-4",  # wide RSD-C tree measuring acceptance by rank
        auto_max_depth=6,  # cap on L
        auto_draft_cost=0.0,  # r in eta / (1 + r L); 0 maximises block efficiency
        # also, per budget, the RSD-C shape with the best predicted token rate on this
        # machine (both models' forward cost by scored tokens is timed at calibration),
        # and the fastest of the model's leaders raced on the calibration prompts
        auto_rate=False,
    ),
    "report": dict(
        probes=False,  # exact expected tokens/call of walk vs traversal on the same trees, ranks
        bootstrap=1000,  # bootstrap resamples for confidence intervals (over prompts)
        progress=True,
        plots=True,
    ),
}
SPECULATIVE_DEFAULTS = {k: v for keys in SPECULATIVE_SECTIONS.values() for k, v in keys.items()}
# Keys renamed since workdirs and commands used them: what to write instead.
SPECULATIVE_RENAMED = {
    "shape": "auto_shape=true (was shape=auto)",
    "shapes": "shape_overrides (was shapes), e.g. shape_overrides=21@rsd_c:7-2",
}


def speculative(arg: str | None, **overrides) -> ml_collections.ConfigDict:
    """A config of the ``speculative`` job: :data:`SPECULATIVE_DEFAULTS` updated by the
    config module's ``overrides``, then by the command line's ``k=v`` string ``arg``.

    Values are range-checked by :func:`experiments.speculative.settings.from_config`,
    which ``experiments.run`` calls before it loads or writes anything, and turned into the
    job's typed settings."""
    unknown = set(overrides) - set(SPECULATIVE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown speculative config keys {sorted(unknown)}")
    return build(SPECULATIVE_DEFAULTS | overrides, arg, renamed=SPECULATIVE_RENAMED)
