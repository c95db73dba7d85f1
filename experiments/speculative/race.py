"""``auto_rate``'s final choice: the predicted-fastest shapes raced on this machine.

The cost model (:func:`shape_search.predicted_rate`) times the model forwards alone, so it
misses what a round spends besides them (drafting's sampling, verification, the commit,
host work) and leans on the calibrated acceptance, whose error on a few prompts is as
large as the gaps between the leading shapes. Measured on the paper's pruned draft, it
ranked RSD-C 3-1 first (1.60x AR predicted) and that shape then ran at 0.91x the plain
2-token chain's rate. So the model only shortlists: :func:`finalists` takes its leaders
over every tree size up to the largest budget, plus its best chain, and :func:`race`
decodes the calibration prompts (never evaluated) with each, compiled first, prompt by
prompt in turn so that load drift falls on all alike, and picks the most tokens per
second of decoding. The outcome is stored in ``WORKDIR/race.json`` and reused by a rerun
with the same finalists and prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.common import distributed, strict_json
from experiments.speculative import shape_search
from experiments.speculative.timed import TimedGenerator, prompt_rng_key
from experiments.speculative.workdir import RACE
from rsd_jax import methods

FINALISTS = 4  # the cost model's leaders raced (the best chain is added when not among them)
KEY_OFFSET = 2  # keys apart from the evaluated prompts' (seed) and calibration's (seed + 1)


def text(branching) -> str:
    return "rsd_c:" + "-".join(str(b) for b in branching)


def finalists(
    table: shape_search.AcceptanceTable,
    costs: shape_search.CostCurves,
    max_budget: int,
    max_depth: int,
    count: int = FINALISTS,
) -> list[tuple[int, ...]]:
    """The ``count`` RSD-C branchings of 1..``max_budget`` nodes with the best predicted rate,
    best first, then the best-predicted chain (all branchings 1) if it is not among them."""
    rated = []
    for budget in range(1, max_budget + 1):
        for shape in shape_search.shapes_for_budget(budget, table.width, max_depth):
            rated.append((shape_search.predicted_rate(table, shape, costs), shape))
    if not rated:
        raise ValueError(f"no RSD-C branching within width {table.width} and L <= {max_depth}")
    rated.sort(key=lambda x: (-x[0], len(x[1])))
    out = [shape for _, shape in rated[:count]]
    chains = [shape for _, shape in rated if set(shape) == {1}]
    if chains and chains[0] not in out:
        out.append(chains[0])
    return out


def race(
    settings, bundle, prompts, bucket, shapes, workdir: Path, log, layout=None
) -> tuple[str, dict]:
    """Decodes each calibration prompt with each shape; ``(winner's method text, rates)``.

    ``rates`` maps method text to generated tokens per second of decoding (prefill and
    compilation excluded), summed over the prompts. Every shape decodes the same prompts
    with the same keys for ``settings.auto.tokens`` tokens.
    """
    texts = [text(s) for s in shapes]
    stored_as = dict(methods=texts, prompts=[p.key for p in prompts], max_new=settings.auto.tokens)
    path = workdir / RACE
    reuse = None
    if distributed.is_main() and path.is_file():  # process 0 decides, for every process
        stored = json.loads(path.read_text())
        if stored.get("settings") == stored_as:
            log(f"race reused from {path}")
            reuse = stored["rates"]
    rates = distributed.broadcast_json(reuse)
    if rates is None:
        rates = _run(settings, bundle, prompts, bucket, texts, log, layout)
        if distributed.is_main():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(strict_json.dumps({"settings": stored_as, "rates": rates}, indent=2))
            tmp.replace(path)
    best = winner(rates)
    log("raced on the calibration prompts (tokens/s): " + ", ".join(
        f"{t} {rates[t]:.2f}" for t in texts) + f"; fastest {best}")  # fmt: skip
    return best, rates


def winner(rates: dict) -> str:
    """The fastest method text of ``rates`` (the earlier-listed, i.e. better-predicted, on
    a tie)."""
    texts = list(rates)
    return max(texts, key=lambda t: (rates[t], -texts.index(t)))


def _run(settings, bundle, prompts, bucket, texts, log, layout) -> dict:
    tokens = settings.auto.tokens
    gens = {}
    for t in texts:
        log(f"race: compiling {t}")
        gens[t] = TimedGenerator(bundle, methods.parse(t), bucket, tokens, layout)
        gens[t].warm_up(prompts[0])
    made = dict.fromkeys(texts, 0)
    seconds = dict.fromkeys(texts, 0.0)
    for p in prompts:
        key = prompt_rng_key(settings.seed + KEY_OFFSET, p.key)
        for t in texts:
            rec = gens[t](p, key)
            made[t] += rec["generated"]
            seconds[t] += rec["decode_seconds"]
        log(f"race: {p.key} done")
    return {t: made[t] / max(seconds[t], 1e-9) for t in texts}
