"""``auto_shape``: calibrating acceptance by depth and sibling rank before the timed runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from experiments.common import distributed, strict_json
from experiments.speculative import shape_search
from experiments.speculative.settings import Settings
from experiments.speculative.timed import TimedGenerator, prompt_rng_key
from experiments.speculative.workdir import CALIBRATION, COSTS
from rsd_jax import methods


def calibrate(
    settings: Settings, bundle, prompts, bucket, workdir: Path, log, layout=None, evaluated=()
) -> shape_search.AcceptanceTable:
    """``auto_shape``: acceptance by depth and sibling rank on the calibration prompts.

    Decodes each calibration prompt for ``settings.auto.tokens`` tokens with
    ``rsd_c:<settings.auto.shape>`` and probes on, pools the exact ``A_d(b)`` sums
    (:mod:`rsd_jax.probes`) and stores them in ``WORKDIR/calibration.json``. A rerun
    reuses the stored calibration when its method, length and number of prompts match
    and none of its prompts is among the ``evaluated`` prompts (so growing
    ``num_prompts`` keeps it).
    """
    text = f"rsd_c:{settings.auto.shape}"
    method = methods.parse(text)
    tokens = settings.auto.tokens
    stored_as = dict(method=text, prompts=[p.key for p in prompts], max_new=tokens)
    path = workdir / CALIBRATION
    reuse = None
    if distributed.is_main() and path.is_file():  # process 0 decides, for every process
        stored = json.loads(path.read_text())
        old = stored.get("settings", {})
        same = (old.get("method"), old.get("max_new")) == (text, tokens)
        used = old.get("prompts", [])
        if same and len(used) == len(prompts) and not set(used) & {p.key for p in evaluated}:
            log(f"calibration reused from {path} (prompts {', '.join(used)})")
            reuse = stored["table"]
    reuse = distributed.broadcast_json(reuse)
    if reuse is not None:
        return shape_search.AcceptanceTable.from_json(reuse)
    gen_ = TimedGenerator(bundle, method, bucket, tokens, layout, probes=True)
    sums, counts = [], []
    for p in prompts:
        log(f"calibrating with {text} on {p.key} ({tokens} tokens)")
        rec = gen_(p, prompt_rng_key(settings.seed + 1, p.key))
        sums.append(rec["rank_accept"])
        counts.append(rec["rank_count"])
    table = shape_search.calibration_table(sums, counts)
    if not distributed.is_main():
        return table
    tmp = path.with_suffix(".tmp")
    tmp.write_text(strict_json.dumps({"settings": stored_as, "table": table.to_json()}, indent=2))
    tmp.replace(path)
    return table


def cost_widths(settings: Settings, width: int) -> tuple[list[int], list[int]]:
    """Tokens per forward to time: the target at 1 and at every ``B + 1``; the draft at
    powers of two up to the widest level of any candidate shape (``width`` ** depth,
    capped by the largest budget), interpolated between."""
    budgets = settings.sweep.budgets
    target = sorted({1, *(b + 1 for b in budgets)})
    widest = min(max(budgets), width ** max(settings.auto.max_depth - 1, 0))
    draft = [1]
    while draft[-1] < widest:
        draft.append(draft[-1] * 2)
    return target, draft


def cost_curves(settings: Settings, bundle, width: int, workdir: Path, log):
    """``auto_rate``: each model's forward seconds by scored tokens, timed on this machine
    after 64 cached tokens (:func:`experiments.bench.round_timing.tree_cost_curve`) and
    stored in ``WORKDIR/costs.json``; a rerun with the same widths reuses them."""
    from experiments.bench import round_timing

    target_w, draft_w = cost_widths(settings, width)
    path = workdir / COSTS
    reuse = None
    if distributed.is_main() and path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("widths") == [target_w, draft_w]:
            log(f"forward costs reused from {path}")
            reuse = stored["curves"]
    reuse = distributed.broadcast_json(reuse)
    if reuse is not None:
        return shape_search.CostCurves.from_json(reuse)
    log(f"timing forwards: target at {target_w} tokens, draft at {draft_w}")
    curves = shape_search.CostCurves(
        round_timing.tree_cost_curve(bundle.target, 64, 64 + max(target_w) + 1, target_w),
        round_timing.tree_cost_curve(bundle.draft, 64, 64 + max(draft_w) + 1, draft_w),
    )
    if distributed.is_main():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"widths": [target_w, draft_w], "curves": curves.to_json()}))
        tmp.replace(path)
    return curves


# Calibration prompts come from another seeded draw than the evaluated ones, so they
# do not move into (or out of) the evaluated set when num_prompts grows.
CALIBRATION_SEED_OFFSET = 7919


def calibration_prompts(settings: Settings, bundle, prompt_source, evaluated) -> list:
    """``settings.auto.prompts`` prompts of the same datasets, none of them evaluated.

    Spread round-robin over the datasets like the evaluated ones, drawn with the seed
    ``seed + CALIBRATION_SEED_OFFSET``.
    """
    wanted = settings.auto.prompts
    drawn = dataclasses.replace(
        settings.prompts,
        seed=settings.seed + CALIBRATION_SEED_OFFSET,
        num_prompts=wanted + len(evaluated),
    )
    more = dataclasses.replace(settings, prompts=drawn)
    keys = {p.key for p in evaluated}
    by_dataset: dict[str, list] = {}
    for p in prompt_source(more, bundle):
        if p.key not in keys:
            by_dataset.setdefault(p.dataset, []).append(p)
    picked, queues = [], list(by_dataset.values())
    while len(picked) < wanted and any(queues):
        for q in queues:
            if q and len(picked) < wanted:
                picked.append(q.pop(0))
    if not picked:
        raise ValueError("auto_shape found no calibration prompts beyond the evaluated ones")
    return picked
