"""The ``speculative`` job's settings: every key checked, then turned into typed values once.

:func:`from_config` is the boundary between the ml_collections config
(``experiments/configs/{default,fixed_length,fixed_budget,verifiers}.py``) and the job: it
checks every key against its accepted range, all bad keys in one line
(:class:`experiments.common.checks.ConfigError`), then the methods and shapes of the sweep
(:func:`experiments.speculative.plan.plan`), and returns a frozen :class:`Settings` that
the rest of the job takes. Nothing past it reads the config.

Accepted ranges, by section of ``experiments/configs/common.py``:

- what to run: ``sweep`` one of :data:`SWEEPS`; ``method`` a ``+``-separated list
  without repeats;
- models: ``target``, ``draft`` non-empty; ``draft_vocab >= 0``; ``draft_weights``
  ``'auto'`` or one of ``models.arch.config.WEIGHTS``, ``target_weights`` ``'auto'``,
  ``'float'`` or ``'tiled'`` (``tiled``/``int8`` only with a float32 or ``auto`` dtype and
  no mesh; ``auto`` decides per machine, :func:`models.arch.quantize.auto_layout`);
  ``dtype`` ``'auto'`` or one of ``models.arch.config.DTYPES``; ``mesh``: ``""`` or
  ``DxM`` with ``D, M >= 1`` (``D`` divides ``batch``);
- prompts: ``dataset`` ``+``-separated known names without repeats; ``num_prompts``,
  ``batch``, ``max_new_tokens``, ``shakespeare_lines`` integers ``>= 1``;
  ``max_prompt_tokens >= 2``
  (:data:`MIN_PROMPT_TOKENS`: drafting re-reads the last prompt token, so a prompt needs
  two); ``chat_template`` one of :data:`CHAT_TEMPLATES`;
- sampling: ``sampling`` ``'paper'`` (the paper's per-dataset temperature and top-p) or
  ``'fixed'`` (``temperature``, a finite number ``>= 0``, ``0`` = greedy, and ``top_p`` in
  ``(0, 1]``, for every dataset); with ``'paper'``, ``temperature`` and ``top_p`` must stay
  at their defaults (they would be ignored); ``seed`` an integer in ``[0, 2**32 - 1]``;
- sweeps: ``lengths``, ``budgets`` ``+``-separated distinct integers ``>= 1``; ``width``,
  ``sd_max_length`` ``>= 1``; ``shape_overrides`` ``+``-separated ``B@name:shape`` items,
  at most one per budget and method;
- auto shapes: ``auto_shape`` a bool (it needs ``sweep=budget``); ``calibration_prompts``,
  ``calibration_tokens``, ``auto_max_depth`` ``>= 1``; ``calibration_shape`` an RSD-C
  branching; ``auto_draft_cost`` a finite number ``>= 0``; ``auto_rate`` a bool (it needs
  ``auto_shape=true``);
- report: ``bootstrap >= 1``; ``probes``, ``progress``, ``plots`` bools.

Values of keys that have been replaced fail with what to write instead: the former
``temperature=-1`` / ``top_p=-1`` (the paper's setting) is ``sampling=paper``; the former
``shape=auto`` and ``shapes=...`` keys are ``auto_shape=true`` and ``shape_overrides=...``
(:data:`experiments.configs.common.SPECULATIVE_RENAMED`, rejected when the config is built).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

from experiments.common import mesh as mesh_lib
from experiments.common.checks import SEED_MAX, Checks, ConfigError, is_int, is_real, plus_items
from experiments.configs import common
from experiments.data import datasets
from experiments.speculative import plan as plan_lib
from models.arch.config import DTYPES, WEIGHTS
from models.arch.quantize import AUTO
from rsd_jax import methods

MIN_PROMPT_TOKENS = 2
SAMPLINGS = ("paper", "fixed")
FORMER_PAPER_SENTINEL = -1  # temperature / top_p before the ``sampling`` key existed
SWEEPS = ("none", "length", "budget")
CHAT_TEMPLATES = ("auto", "always", "never")
AT_LEAST_ONE = (
    "num_prompts",
    "batch",
    "max_new_tokens",
    "shakespeare_lines",
    "width",
    "sd_max_length",
    "calibration_prompts",
    "calibration_tokens",
    "auto_max_depth",
    "bootstrap",
)
BOOLS = ("scan_layers", "auto_shape", "auto_rate", "probes", "progress", "plots")

# The paper's sampling settings (docs/algorithms.md, Metrics): (temperature, top_p).
PAPER_SAMPLING = {"summarise": (0.3, 1.0), "translate": (0.3, 1.0)}
PAPER_DEFAULT = (1.0, 0.95)  # instruction/chat data; also used for code and continuation


def paper_sampling(dataset: str) -> tuple[float, float]:
    """The paper's ``(temperature, top_p)`` for ``dataset``."""
    return PAPER_SAMPLING.get(dataset, PAPER_DEFAULT)


@dataclasses.dataclass(frozen=True)
class Models:
    """Which models, and how their weights are stored.

    Attributes:
      target, draft: preset names or local paths (.gguf file, safetensors directory).
      draft_vocab: 0, or N: the draft scores only its N most frequent ids (+ specials).
      target_weights, draft_weights: ``'auto'``, ``'float'``, ``'tiled'`` or ``'int8'``
        (draft only); ``auto`` is decided when the models load
        (:func:`experiments.speculative.sources.resolve`).
      dtype: ``'auto'``, ``'float32'`` or ``'bfloat16'``.
      scan_layers: the blocks under one scan (faster compiles, slower calls on CPU).
      mesh: ``(data, model)`` device counts (every process's devices), or None for one.
    """

    target: str
    draft: str
    draft_vocab: int
    target_weights: str
    draft_weights: str
    dtype: str
    scan_layers: bool
    mesh: tuple[int, int] | None


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Which prompts, and how long each generation is.

    Attributes:
      datasets: names among :data:`experiments.data.datasets.DATASETS`, in order.
      num_prompts: prompts in all, spread round-robin over ``datasets``.
      batch: prompts decoded together (of one sampling setting); each record's seconds
        are its share of its batch's.
      max_new_tokens: tokens generated per prompt.
      max_prompt_tokens: user text longer than this keeps its head and tail.
      chat_template: ``'auto'`` (chat tasks), ``'always'`` or ``'never'``.
      shakespeare_lines: lines of a Shakespeare passage.
      seed: the selection's seed (and, with the prompt's key, its random numbers).
    """

    datasets: tuple[str, ...]
    num_prompts: int
    batch: int
    max_new_tokens: int
    max_prompt_tokens: int
    chat_template: str
    shakespeare_lines: int
    seed: int

    def per_dataset(self) -> dict[str, int]:
        """``num_prompts`` spread round-robin over ``datasets`` in order.

        Counts only grow with ``num_prompts``, and each dataset's selection is a prefix of
        a seeded permutation, so a larger ``num_prompts`` extends a smaller run (resumable).
        """
        base, extra = divmod(self.num_prompts, len(self.datasets))
        return {name: base + (i < extra) for i, name in enumerate(self.datasets)}


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How tokens are drawn: the paper's per-dataset setting or one fixed setting.

    Attributes:
      mode: ``'paper'`` (:func:`paper_sampling`) or ``'fixed'``.
      temperature, top_p: the fixed setting (``mode='fixed'``; 0 = greedy, 1 = no top-p).
    """

    mode: str
    temperature: float
    top_p: float

    def for_dataset(self, dataset: str) -> tuple[float, float]:
        """``(temperature, top_p)`` of ``dataset``'s prompts."""
        if self.mode == "paper":
            return paper_sampling(dataset)
        return float(self.temperature), float(self.top_p)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Which methods run, at which sweep points (:func:`experiments.speculative.plan.plan`).

    Attributes:
      kind: ``'none'``, ``'length'`` (fixed draft length) or ``'budget'`` (fixed budget).
      methods: method texts (``rsd_s:3x2``) or, for sweeps, bare names (``rsd_s``).
      lengths: the draft lengths L of ``kind='length'``.
      width: ``kind='length'``: K = W = ``width``, RSD-C ``width-1-..-1``.
      budgets: the target budgets B of ``kind='budget'``.
      sd_max_length: ``kind='budget'``: SD is a chain of ``min(B, sd_max_length)``.
      shape_overrides: ``(B, method text)`` pairs replacing the budget table's shapes.
    """

    kind: str
    methods: tuple[str, ...]
    lengths: tuple[int, ...]
    width: int
    budgets: tuple[int, ...]
    sd_max_length: int
    shape_overrides: tuple[tuple[int, str], ...]


@dataclasses.dataclass(frozen=True)
class AutoShape:
    """``auto_shape``: the RSD-C shape a calibration predicts best, per budget.

    Attributes:
      enabled: run it (needs ``sweep=budget``).
      prompts, tokens: calibration prompts (never evaluated) and tokens per prompt.
      shape: the wide RSD-C branching that measures acceptance by rank (``'4-4'``).
      max_depth: cap on L.
      draft_cost: ``r`` in ``eta / (1 + r L)``; 0 maximises block efficiency.
      rate: also the shape with the best predicted token rate from the models' forward
        costs, timed at calibration (:func:`shape_search.predicted_rate`).
    """

    enabled: bool
    prompts: int
    tokens: int
    shape: str
    max_depth: int
    draft_cost: float
    rate: bool = False


@dataclasses.dataclass(frozen=True)
class Report:
    """What the run reports besides its records.

    Attributes:
      probes: exact expected tokens per call of walk vs traversal, acceptance by rank.
      bootstrap: resamples of the confidence intervals.
      progress, plots: a progress bar; PNG plots.
    """

    probes: bool
    bootstrap: int
    progress: bool
    plots: bool


@dataclasses.dataclass(frozen=True)
class Settings:
    """A checked ``speculative`` config as typed values (see the module docstring).

    Attributes:
      models, prompts, sampling, sweep, auto, report: the sections.
      recorded: the config's flat keys and values, read-only, as the workdir's
        ``config.json`` and ``summary.json`` record them.
    """

    models: Models
    prompts: Prompts
    sampling: Sampling
    sweep: Sweep
    auto: AutoShape
    report: Report
    recorded: Mapping[str, Any] = dataclasses.field(compare=False, repr=False)

    @property
    def seed(self) -> int:
        return self.prompts.seed


def from_config(config) -> Settings:
    """Checks every key of a ``speculative`` config and returns its :class:`Settings`.

    Raises:
      ConfigError: one line naming each bad key, its value and the accepted range; or
        the first problem with the methods and shapes of the sweep.
    """
    _check_keys(config)
    settings = _build(config)
    try:
        runs = plan_lib.plan(settings)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    labels = [r.label for r in runs]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ConfigError(
            f"'method' must run each method once per sweep point; {', '.join(repeated)} "
            f"comes twice (from {config.method!r})"
        )
    return settings


def _build(c) -> Settings:
    overrides = []
    for item in plus_items(c.shape_overrides):
        budget, _, text = item.partition("@")
        overrides.append((int(budget), text.strip()))
    return Settings(
        models=Models(
            c.target, c.draft, c.draft_vocab, c.target_weights,
            c.draft_weights, c.dtype, c.scan_layers, mesh_lib.parse_mesh(c.mesh),
        ),
        prompts=Prompts(
            plus_items(c.dataset), c.num_prompts, c.batch, c.max_new_tokens, c.max_prompt_tokens,
            c.chat_template, c.shakespeare_lines, c.seed,
        ),
        sampling=Sampling(c.sampling, float(c.temperature), float(c.top_p)),
        sweep=Sweep(
            c.sweep, plus_items(c.method), tuple(int(x) for x in plus_items(c.lengths)),
            c.width, tuple(int(x) for x in plus_items(c.budgets)), c.sd_max_length,
            tuple(overrides),
        ),
        auto=AutoShape(
            c.auto_shape, c.calibration_prompts, c.calibration_tokens, c.calibration_shape,
            c.auto_max_depth, float(c.auto_draft_cost), c.auto_rate,
        ),
        report=Report(c.probes, c.bootstrap, c.progress, c.plots),
        recorded=types.MappingProxyType(c.to_dict()),
    )  # fmt: skip


def _check_keys(config) -> None:
    c = Checks(config)
    c.choice("sweep", SWEEPS)
    c.items("method")
    for key in ("target", "draft"):
        c.text(key, "a preset name or a model path")
    c.choice("dtype", (AUTO, *DTYPES))
    names = c.items("dataset")
    unknown = [n for n in names if n not in datasets.DATASETS]
    if unknown or not names:
        which = f" (unknown dataset {unknown[0]!r})" if unknown else ""
        c.fail("dataset", "'+'-separated names among " + ", ".join(datasets.DATASETS) + which)
    for key in AT_LEAST_ONE:
        c.int_in(key, 1)
    c.int_in("max_prompt_tokens", MIN_PROMPT_TOKENS)
    c.int_in("draft_vocab", 0)  # 0 = full; the upper bound is the draft's, checked on load
    c.choice("draft_weights", (AUTO, *WEIGHTS))
    c.choice("target_weights", (AUTO, "float", "tiled"))  # int8 would change the target's law
    laid_out = [k for k in ("target_weights", "draft_weights") if config[k] in WEIGHTS[1:]]
    if laid_out and config.dtype not in ("float32", AUTO):
        c.fail(laid_out[0], f"'float' with dtype={config.dtype!r} (tiles compute in float32)")
    c.choice("chat_template", CHAT_TEMPLATES)
    _check_sampling(c)
    c.int_in("seed", 0, SEED_MAX)
    c.ints("lengths")
    c.ints("budgets")
    _check_shape_overrides(c)
    try:
        methods.parse(f"rsd_c:{config.calibration_shape}")
    except ValueError:
        c.fail("calibration_shape", "an RSD-C branching such as 4-4")
    c.real_at_least_zero("auto_draft_cost")
    for key in BOOLS:
        c.boolean(key)
    try:
        sizes = mesh_lib.parse_mesh(config.mesh)
    except (ValueError, AttributeError):
        sizes = (0, 0)
    if sizes is not None and min(sizes) < 1:
        c.fail("mesh", "'' (one device) or DxM with D, M >= 1 (data x model devices)")
    elif sizes is not None and is_int(config.batch) and config.batch % sizes[0]:
        c.fail("batch", f"a multiple of the mesh's data axis {sizes[0]} (mesh={config.mesh!r}): "
               "each data shard decodes its rows of a batch")  # fmt: skip
    if sizes is not None and laid_out:
        c.fail(laid_out[0], "'float' with a mesh (tiled and int8 weights are a one-device CPU "
               "layout without tensor-parallel rules)")  # fmt: skip
    c.raise_if_any()


def _check_sampling(c: Checks) -> None:
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
        elif key == "temperature" and not (is_real(value) and math.isfinite(value) and value >= 0):
            c.fail(key, accepted)
        elif key == "top_p" and not (is_real(value) and 0 < value <= 1):
            c.fail(key, accepted)
        elif config.sampling == "paper" and value != default:
            c.fail(key, f"left at {default} with sampling=paper, which takes the paper's per-"
                   f"dataset value; write sampling=fixed,{key}={value:g} to use it")  # fmt: skip


def _check_shape_overrides(c: Checks) -> None:
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
