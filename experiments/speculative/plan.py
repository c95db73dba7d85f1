"""Which methods a job runs: one comparable setting, a fixed-length or a fixed-budget sweep.

A *run spec* is one method at one sweep point. Specs are deduplicated by method text when
generating (a capped SD chain may serve several budgets) but reported per sweep point.

What is read (:class:`experiments.speculative.settings.Settings`): ``sweep.methods`` (full
method strings such as ``rsd_s:3x2`` for ``kind='none'``, bare names ``sd``/``mrs``/
``spectr``/``rsd_c``/``rsd_s`` or full strings for sweeps), ``sweep.kind``, ``lengths``,
``width``, ``budgets``, ``sd_max_length``, ``shape_overrides`` (replacing the shapes of the
fixed-budget table) and ``auto`` (with a calibration, each budget also gets the RSD-C shape
it predicts best).
"""

from __future__ import annotations

import dataclasses

import jax

from experiments.common import policy
from experiments.speculative import shape_search
from rsd_jax import methods

AUTO_NOTE = "auto_shape"  # how the note of an auto-chosen spec begins

# Fixed-budget shapes realising each target budget B (root excluded): SpecTr/MRS K x L = B,
# RSD-S W x L = B, RSD-C sum of branching products = B. SD is a chain of L = B, capped.
BUDGET_SHAPES = {
    6: {"mrs": "3x2", "spectr": "3x2", "rsd_s": "3x2", "rsd_c": "2-2"},
    10: {"mrs": "5x2", "spectr": "5x2", "rsd_s": "5x2", "rsd_c": "2-2-1"},
    14: {"mrs": "7x2", "spectr": "7x2", "rsd_s": "7x2", "rsd_c": "2-2-2"},
    21: {"mrs": "7x3", "spectr": "7x3", "rsd_s": "7x3", "rsd_c": "3-2-1-1"},
    30: {"mrs": "6x5", "spectr": "6x5", "rsd_s": "6x5", "rsd_c": "2-2-2-2"},
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One method at one sweep point.

    Attributes:
      label: unique name in the summary (e.g. ``"rsd_s:3x2"`` or ``"B=10 sd:8"``).
      text: method text for :func:`rsd_jax.methods.parse` (records are keyed by it).
      name: display name (``"RSD-S"``).
      shape: the tree shape, as :meth:`TreeSpec.describe` writes it.
      length: ``L``, sequential draft calls per round.
      budget: ``B``, draft nodes the target scores per call (root excluded).
      sweep_value: the sweep point (``L`` or the nominal ``B``), None without a sweep.
      note: e.g. that an SD chain was capped below the nominal budget.
    """

    label: str
    text: str
    name: str
    shape: str
    length: int
    budget: int
    sweep_value: int | None = None
    note: str = ""


def _spec(text: str, label: str | None = None, sweep_value=None, note="") -> RunSpec:
    m = methods.parse(text)
    return RunSpec(
        label or text, text, m.name, m.spec.describe(), m.draft_calls, m.budget, sweep_value, note
    )


def _with_ar(specs: list[RunSpec]) -> list[RunSpec]:
    """AR first (the token-rate baseline is measured in the same run)."""
    rest = [s for s in specs if s.text != "ar"]
    return [_spec("ar")] + rest


def plan(settings, calibration=None, costs=None, raced=None) -> list[RunSpec]:
    """The run specs of a job (AR always first).

    Args:
      settings: the job's :class:`experiments.speculative.settings.Settings`.
      calibration: with ``auto.enabled``, the measured
        :class:`experiments.speculative.shape_search.AcceptanceTable`; each budget then
        also gets the RSD-C shape it predicts best (without it, only the other specs are
        listed).
      costs: with ``auto.rate``, the measured
        :class:`experiments.speculative.shape_search.CostCurves`; each budget then also
        gets the RSD-C shape with the best predicted token rate.
      raced: with ``auto.rate``, the method text that won :func:`race.race` on this
        machine; it is added once, at its own number of nodes.

    Raises:
      ValueError: unknown method, malformed shape, unknown sweep, or a shape that does
        not realise its budget.
    """
    sweep, auto = settings.sweep, settings.auto
    items = list(sweep.methods)
    if not items:
        raise ValueError("config key 'method' names no method")
    if auto.enabled and sweep.kind != "budget":
        raise ValueError("auto_shape chooses shapes per target budget: it needs sweep=budget")
    if auto.rate and not auto.enabled:
        raise ValueError("auto_rate ranks the calibrated shapes by cost: it needs auto_shape=true")
    if sweep.kind == "none":
        specs = []
        for item in items:
            if item == policy.AUTO:
                batch = settings.prompts.batch
                text = policy.choose(batch, jax.default_backend())
                specs.append(_spec(text, note=f"auto: the policy's method at batch {batch}"))
                continue
            if ":" not in item and methods.parse_name(item)[0] != "ar":
                raise ValueError(f"method {item!r} needs a shape here, e.g. rsd_s:3x2")
            specs.append(_spec(item))
        return _with_ar(specs)
    if sweep.kind == "length":
        return _with_ar(_length_sweep(items, sweep.lengths, sweep.width))
    if sweep.kind == "budget":
        specs = _budget_sweep(items, sweep.budgets, sweep.sd_max_length, sweep.shape_overrides)
        if auto.enabled and calibration is not None:
            specs += auto_specs(calibration, sweep.budgets, auto.max_depth, auto.draft_cost)
            if auto.rate and costs is not None:
                specs += auto_rate_specs(calibration, sweep.budgets, auto.max_depth, costs)
                if raced is not None:
                    specs.append(raced_spec(raced))
        return _with_ar(specs)
    raise ValueError(f"unknown sweep {sweep.kind!r}; choose none, length or budget")


def length_shape(name: str, length: int, width: int) -> str:
    """Fixed-length shapes: SD chain L; MRS/SpecTr/RSD-S ``width x L``; RSD-C ``width-1-..-1``.

    Every tree method then scores the same budget ``B = width * L``.
    """
    if name == "sd":
        return f"sd:{length}"
    if name == "rsd_c":
        return "rsd_c:" + "-".join([str(width)] + ["1"] * (length - 1))
    return f"{name}:{width}x{length}"


def _length_sweep(items, lengths, width) -> list[RunSpec]:
    specs = []
    for length in lengths:
        if length < 1:
            raise ValueError(f"draft lengths must be >= 1, got {length}")
        for item in items:
            if item == "ar":
                continue
            if ":" in item:
                raise ValueError(
                    f"fixed-length sweeps take bare method names, got {item!r}; "
                    "shapes follow from L and 'width'"
                )
            name, rule = methods.parse_name(item)
            text = length_shape(name, length, width) + rule
            specs.append(_spec(text, f"L={length} {text}", length))
    return specs


def _overrides(shape_overrides) -> dict[tuple[int, str], str]:
    """``{(B, method name): method text}`` of the ``(B, text)`` override pairs."""
    out = {}
    for budget, text in shape_overrides:
        if ":" not in text:
            raise ValueError(f"shape override {budget}@{text} is not of the form B@name:shape")
        out[(budget, text.split(":")[0])] = text
    return out


def budget_spec(text: str, budget: int, sd_max_length: int) -> RunSpec:
    """The run spec of ``text`` at nominal budget ``budget``, checked.

    SD is a chain of ``L = min(B, sd_max_length)`` (a 30-token chain is never sensible);
    every other method must score exactly ``B`` nodes.

    Raises:
      ValueError: the shape does not realise the budget.
    """
    m = methods.parse(text)
    note = ""
    if m.spec.is_chain and m.draft_calls > 0:
        want = min(budget, sd_max_length)
        if m.draft_calls != want:
            raise ValueError(
                f"{text} does not fit budget B={budget}: SD uses L=min(B, sd_max_length)={want}"
            )
        if want < budget:
            note = f"SD capped at L={want} (B={want} < {budget})"
    elif m.budget != budget:
        raise ValueError(
            f"shape {text} scores B={m.budget} nodes per target call, not the budget {budget}"
        )
    return _spec(text, f"B={budget} {text}", budget, note)


def _budget_sweep(items, budgets, sd_max_length, shape_overrides) -> list[RunSpec]:
    overrides = _overrides(shape_overrides)
    for budget, name in overrides:
        if budget not in budgets:
            raise ValueError(f"shape override for B={budget} but budgets are {budgets}")
        methods.parse_name(name)
    specs = []
    for item in items:
        if item == "ar":
            continue
        if ":" in item:  # a full shape: it must realise one of the budgets
            m = methods.parse(item)
            if m.spec.is_chain:
                fits = [b for b in budgets if min(b, sd_max_length) == m.draft_calls]
            else:
                fits = [b for b in budgets if m.budget == b]
            if not fits:
                raise ValueError(
                    f"shape {item} scores B={m.budget} nodes per call, which is none of the "
                    f"budgets {budgets}"
                )
            specs.extend(budget_spec(item, b, sd_max_length) for b in fits)
            continue
        name, rule = methods.parse_name(item)
        for budget in budgets:
            if (budget, name) in overrides:
                text = overrides[(budget, name)] + rule
            elif name == "sd":
                text = f"sd:{min(budget, sd_max_length)}{rule}"
            elif budget in BUDGET_SHAPES:
                text = f"{name}:{BUDGET_SHAPES[budget][name]}{rule}"
            else:
                raise ValueError(
                    f"no default {item} shape for budget B={budget} (defaults exist for "
                    f"{sorted(BUDGET_SHAPES)}); give one with shape_overrides={budget}@{item}:..."
                )
            specs.append(budget_spec(text, budget, sd_max_length))
    return specs


def auto_specs(calibration, budgets, max_depth: int, draft_cost: float) -> list[RunSpec]:
    """Per budget, the RSD-C branching :func:`shape_search.best_branching` predicts best."""
    specs = []
    for budget in budgets:
        shape, value, _ = shape_search.best_branching(calibration, budget, max_depth, draft_cost)
        text = "rsd_c:" + "-".join(str(b) for b in shape)
        what = "block efficiency" if draft_cost == 0 else f"eta/(1+{draft_cost:g}L)"
        note = f"{AUTO_NOTE} (predicted {what} {value:.3f})"
        specs.append(_spec(text, f"B={budget} auto {text}", budget, note))
    return specs


def auto_rate_specs(calibration, budgets, max_depth: int, costs) -> list[RunSpec]:
    """Per budget, the RSD-C branching with the best predicted token rate on this machine
    (:func:`shape_search.best_rate_branching`; labels ``B=.. auto rate rsd_c:..``)."""
    specs = []
    for budget in budgets:
        shape, value = shape_search.best_rate_branching(calibration, budget, max_depth, costs)
        text = "rsd_c:" + "-".join(str(b) for b in shape)
        note = f"{AUTO_NOTE} rate (predicted {value:.2f}x AR from the measured forward costs)"
        specs.append(_spec(text, f"B={budget} auto rate {text}", budget, note))
    return specs


def raced_spec(text: str) -> RunSpec:
    """The shape that decoded fastest on the calibration prompts (label ``B=.. auto rate
    raced rsd_c:..``, at its own number of nodes)."""
    budget = methods.parse(text).budget
    note = f"{AUTO_NOTE} rate (fastest of the cost model's finalists, raced on this machine)"
    return _spec(text, f"B={budget} auto rate raced {text}", budget, note)


def describe(specs: list[RunSpec]) -> str:
    """A markdown list of the shapes used (printed and saved with the results)."""
    lines = ["| label | method | shape | L | B | note |", "|---|---|---|---|---|---|"]
    for s in specs:
        lines.append(f"| {s.label} | {s.name} | {s.shape} | {s.length} | {s.budget} | {s.note} |")
    return "\n".join(lines)
