"""Config validation: a bad setting fails with one line, before models load or files are written.

:func:`validate` is the first thing a job does (``experiments.run``, the runner, the toy
demo). It checks every key of the config
against its accepted range and raises :class:`ConfigError` (a ``ValueError``) whose
one-line message names each bad key, the value given and what is accepted, e.g.::

    bad config: 'max_new_tokens' must be an integer >= 1, got 0; 'seed' must be an
    integer in [0, 4294967295], got -1

All key errors are reported together; then the methods and shapes of the sweep are
checked (:func:`experiments.plan.plan`), which needs valid keys to begin with.

Accepted ranges of the ``speculative`` job, by section of
``experiments/configs/common.py``:

- what to run: ``sweep`` one of its listed values; ``method`` a ``+``-separated list
  without repeats;
- models: ``target``, ``draft`` non-empty; ``draft_vocab >= 0``; ``draft_weights`` one of
  ``models.config.WEIGHTS``, ``target_weights`` ``'float'`` or ``'tiled'`` (both
  ``'float'`` unless ``dtype`` is float32); ``dtype`` one of ``models.config.DTYPES``;
  ``mesh``: ``""`` or ``1xM`` with ``M >= 1``;
- prompts: ``dataset`` ``+``-separated known names without repeats; ``num_prompts``,
  ``max_new_tokens``, ``shakespeare_lines`` integers ``>= 1``; ``max_prompt_tokens >= 2``
  (:data:`MIN_PROMPT_TOKENS`: drafting re-reads the last prompt token, so a prompt needs
  two); ``chat_template`` one of its listed values;
- sampling: ``sampling`` ``'paper'`` (the paper's per-dataset temperature and top-p) or
  ``'fixed'`` (``temperature``, a finite number ``>= 0``, ``0`` = greedy, and ``top_p`` in
  ``(0, 1]``, for every dataset); with ``'paper'``, ``temperature`` and ``top_p`` must stay
  at their defaults (they would be ignored); ``seed`` an integer in ``[0, 2**32 - 1]``
  (the calibration draw adds a small offset);
- sweeps: ``lengths``, ``budgets`` ``+``-separated distinct integers ``>= 1``; ``width``,
  ``sd_max_length`` ``>= 1``; ``shape_overrides`` ``+``-separated ``B@name:shape`` items,
  at most one per budget and method;
- auto shapes: ``auto_shape`` a bool (it needs ``sweep=budget``); ``calibration_prompts``,
  ``calibration_tokens``, ``auto_max_depth`` ``>= 1``; ``calibration_shape`` an RSD-C
  branching; ``auto_draft_cost`` a finite number ``>= 0``;
- report: ``bootstrap >= 1``; ``probes``, ``progress``, ``plots`` bools.

Values of keys that have been replaced fail with what to write instead: the former
``temperature=-1`` / ``top_p=-1`` (the paper's setting) is ``sampling=paper``; the former
``shape=auto`` and ``shapes=...`` keys are ``auto_shape=true`` and ``shape_overrides=...``
(:data:`experiments.configs.common.SPECULATIVE_RENAMED`, rejected when the config is built).

The ``toy_demo`` job (``experiments/configs/toy_demo.py``): ``vocab >= 3`` (its context is
the ids ``(1, 2)``), ``order >= 1``, tables of at most :data:`TOY_TABLE_LIMIT` entries,
``alpha`` finite ``> 0``, ``agreement`` in ``[0, 1]`` (outside it the draft table is no
distribution, and lossless methods would look broken), ``rounds >= 1``, ``draft_cost``
finite ``>= 0``, ``seed`` as above, and ``methods`` a ``+``-separated list of distinct
drafting methods (no ``ar``: AR is always the first row).
"""

from __future__ import annotations

import math

from experiments import datasets
from experiments import mesh as mesh_lib
from experiments import plan as plan_lib
from experiments.configs import common
from models.config import DTYPES, WEIGHTS
from rsd_jax import methods

SEED_MAX = 2**32 - 1
MIN_PROMPT_TOKENS = 2
SAMPLINGS = ("paper", "fixed")
FORMER_PAPER_SENTINEL = -1  # temperature / top_p before the ``sampling`` key existed
SWEEPS = ("none", "length", "budget")
CHAT_TEMPLATES = ("auto", "always", "never")
SPECULATIVE_AT_LEAST_ONE = (
    "num_prompts",
    "max_new_tokens",
    "shakespeare_lines",
    "width",
    "sd_max_length",
    "calibration_prompts",
    "calibration_tokens",
    "auto_max_depth",
    "bootstrap",
)
SPECULATIVE_BOOLS = ("scan_layers", "auto_shape", "probes", "progress", "plots")
TOY_MIN_VOCAB = 3  # the demo drafts after the context (1, 2)
TOY_TABLE_LIMIT = 2**24  # entries of one n-gram table, (vocab + 1) ** (order - 1) * vocab


class ConfigError(ValueError):
    """A config value outside its accepted range (the message names key, value and range)."""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class _Checks:
    """Collects one message per bad key of ``config``."""

    def __init__(self, config):
        self.config = config
        self.errors: list[str] = []

    def fail(self, key: str, accepted: str) -> None:
        self.errors.append(f"{key!r} must be {accepted}, got {self.config[key]!r}")

    def int_in(self, key: str, lo: int, hi: int | None = None) -> None:
        value = self.config[key]
        if not (_is_int(value) and value >= lo and (hi is None or value <= hi)):
            self.fail(key, f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]")

    def real_at_least_zero(self, key: str) -> None:
        value = self.config[key]
        if not (_is_real(value) and math.isfinite(value) and value >= 0):
            self.fail(key, "a finite number >= 0")

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


def validate(config) -> None:
    """Checks every key of a job's config before anything is loaded or written.

    Raises:
      ConfigError: one line naming each bad key, its value and the accepted range; or
        the first problem with the methods and shapes (:func:`experiments.plan.plan`).
    """
    if config.job == "speculative":
        _speculative(config)
    elif config.job == "toy_demo":
        _toy_demo(config)
    elif config.job == "distill":
        _distill(config)
    else:
        raise ConfigError(
            f"'job' must be 'speculative', 'distill' or 'toy_demo', got {config.job!r}"
        )


def _toy_demo(config) -> None:
    c = _Checks(config)
    c.int_in("vocab", TOY_MIN_VOCAB)
    c.int_in("order", 1)
    if not c.errors and (config.vocab + 1) ** (config.order - 1) * config.vocab > TOY_TABLE_LIMIT:
        c.fail("order", f"small enough for (vocab + 1) ** (order - 1) * vocab <= {TOY_TABLE_LIMIT}")
    a = config.alpha
    if not (_is_real(a) and math.isfinite(a) and a > 0):
        c.fail("alpha", "a finite number > 0 (the Dirichlet concentration)")
    g = config.agreement
    if not (_is_real(g) and 0 <= g <= 1):
        c.fail("agreement", "in [0, 1] (the draft mixes the target's table with another)")
    c.int_in("rounds", 1)
    c.real_at_least_zero("draft_cost")
    c.int_in("seed", 0, SEED_MAX)
    items = c.items("methods")
    if not items and not c.errors:
        c.fail("methods", "a '+'-separated list of methods such as sd:3+rsd_s:2x3")
    for item in items:
        try:
            method = methods.parse(item)
        except ValueError as e:
            c.errors.append(f"'methods': {e}")
            continue
        if method.spec.depth == 0:
            c.fail("methods", "drafting methods only (AR is always the first row)")
    c.raise_if_any()


def _speculative(config) -> None:
    c = _Checks(config)
    c.choice("sweep", SWEEPS)
    c.items("method")
    for key in ("target", "draft"):
        if not (isinstance(config[key], str) and config[key].strip()):
            c.fail(key, "a preset name or a model path")
    c.choice("dtype", DTYPES)
    names = c.items("dataset")
    unknown = [n for n in names if n not in datasets.DATASETS]
    if unknown or not names:
        which = f" (unknown dataset {unknown[0]!r})" if unknown else ""
        c.fail("dataset", "'+'-separated names among " + ", ".join(datasets.DATASETS) + which)
    for key in SPECULATIVE_AT_LEAST_ONE:
        c.int_in(key, 1)
    c.int_in("max_prompt_tokens", MIN_PROMPT_TOKENS)
    c.int_in("draft_vocab", 0)  # 0 = full; the upper bound is the draft's, checked on load
    c.choice("draft_weights", WEIGHTS)
    c.choice("target_weights", ("float", "tiled"))  # int8 would change the target's law
    laid_out = [k for k in ("target_weights", "draft_weights") if config[k] != "float"]
    if laid_out and config.dtype != "float32":
        c.fail(laid_out[0], f"'float' with dtype={config.dtype!r} (tiles compute in float32)")
    c.choice("chat_template", CHAT_TEMPLATES)
    _sampling(c)
    c.int_in("seed", 0, SEED_MAX)
    c.ints("lengths")
    c.ints("budgets")
    _shape_overrides(c)
    try:
        methods.parse(f"rsd_c:{config.calibration_shape}")
    except ValueError:
        c.fail("calibration_shape", "an RSD-C branching such as 4-4")
    c.real_at_least_zero("auto_draft_cost")
    for key in SPECULATIVE_BOOLS:
        c.boolean(key)
    try:
        sizes = mesh_lib.parse_mesh(config.mesh)
    except (ValueError, AttributeError):
        sizes = (0, 0)
    if sizes is not None and (sizes[0] != 1 or sizes[1] < 1):
        c.fail("mesh", "'' (one device) or 1xM with M >= 1 (prompts run one at a time, so the "
               "data axis must be 1)")  # fmt: skip
    laid_out = [k for k in ("target_weights", "draft_weights") if config[k] != "float"]
    if sizes is not None and laid_out:
        c.fail(laid_out[0], "'float' with a mesh (tiled and int8 weights are a one-device CPU "
               "layout without tensor-parallel rules)")  # fmt: skip
    c.raise_if_any()
    try:
        specs = plan_lib.plan(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    labels = [s.label for s in specs]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ConfigError(
            f"'method' must run each method once per sweep point; {', '.join(repeated)} "
            f"comes twice (from {config.method!r})"
        )


DISTILL_AT_LEAST_ONE = (
    "layers", "hidden", "heads", "kv_heads", "mlp_hidden", "train_sequences",
    "heldout_sequences", "top_k", "teacher_batch", "steps", "batch", "eval_every",
    "checkpoint_every", "eval_prompts", "eval_max_new_tokens",
)  # fmt: skip
DISTILL_MIN_SEQ_LEN = 8


def _distill(config) -> None:
    """The ``distill`` job (``experiments/configs/distill.py``)."""
    c = _Checks(config)
    for key in ("target", "init_from"):
        if not (isinstance(config[key], str) and config[key].strip()):
            c.fail(key, "a preset name or a model path")
    c.choice("init", ("prune", "scratch"))
    c.choice("dtype", DTYPES)
    c.ints("keep_layers", minimum=0)
    for key in DISTILL_AT_LEAST_ONE:
        c.int_in(key, 1)
    if not c.errors and config.heads % config.kv_heads:
        c.fail("kv_heads", f"a divisor of heads={config.heads}")
    c.int_in("seq_len", DISTILL_MIN_SEQ_LEN)
    c.int_in("draft_vocab", 0)
    c.int_in("warmup_steps", 0)
    c.int_in("seed", 0, SEED_MAX)
    if _is_int(config.batch) and _is_int(config.train_sequences):
        if config.batch > config.train_sequences:
            c.fail("batch", f"at most train_sequences={config.train_sequences}")
    lr = config.learning_rate
    if not (_is_real(lr) and math.isfinite(lr) and lr > 0):
        c.fail("learning_rate", "a finite number > 0")
    c.real_at_least_zero("weight_decay")
    clip = config.clip_norm
    if not (_is_real(clip) and math.isfinite(clip) and clip > 0):
        c.fail("clip_norm", "a finite number > 0")
    for key in ("freeze_embedding", "evaluate", "progress", "plots"):
        c.boolean(key)
    names = c.items("eval_dataset")
    if not names or any(n not in datasets.DATASETS for n in names):
        c.fail("eval_dataset", "'+'-separated names among " + ", ".join(datasets.DATASETS))
    for item in c.items("eval_methods"):
        try:
            methods.parse(item)
        except ValueError as e:
            c.errors.append(f"'eval_methods': {e}")
    temps = c.items("eval_temperatures")
    try:
        values = [float(t) for t in temps]
    except ValueError:
        values = [-1.0]
    if not values or any(not (math.isfinite(t) and t >= 0) for t in values):
        c.fail("eval_temperatures", "'+'-separated finite numbers >= 0")
    c.raise_if_any()


def _sampling(c: _Checks) -> None:
    """``sampling`` and the ``temperature`` / ``top_p`` it reads (``'fixed'`` only)."""
    config = c.config
    if config.sampling not in SAMPLINGS:
        c.fail("sampling", "'paper' (the paper's per-dataset setting) or 'fixed' (temperature "
               "and top_p for every dataset)")  # fmt: skip
    ranges = {"temperature": "a finite number >= 0 (0 = greedy)", "top_p": "in (0, 1] (1 = off)"}
    for key, accepted in ranges.items():
        value, default = config[key], common.SPECULATIVE_DEFAULTS[key]
        if value == FORMER_PAPER_SENTINEL:
            c.fail(key, f"{accepted}; -1 no longer selects the paper's setting: write "
                   "sampling=paper (the default) instead")  # fmt: skip
        elif key == "temperature" and not (_is_real(value) and math.isfinite(value) and value >= 0):
            c.fail(key, accepted)
        elif key == "top_p" and not (_is_real(value) and 0 < value <= 1):
            c.fail(key, accepted)
        elif config.sampling == "paper" and value != default:
            c.fail(key, f"left at {default} with sampling=paper, which takes the paper's per-"
                   f"dataset value; write sampling=fixed,{key}={value:g} to use it")  # fmt: skip


def _shape_overrides(c: _Checks) -> None:
    """``shape_overrides``: ``B@name:shape`` items, at most one per (budget, method name)."""
    seen = set()
    for item in c.items("shape_overrides"):
        b, sep, text = item.partition("@")
        name = text.split(":")[0].partition("/")[0]
        if not (sep and ":" in text and b.strip().isdigit() and int(b) >= 1):
            c.fail("shape_overrides", "'+'-separated B@name:shape items with B >= 1")
            return
        if (int(b), name) in seen:
            c.fail(
                "shape_overrides", f"at most one override per budget and method (B={int(b)} {name})"
            )
            return
        seen.add((int(b), name))
