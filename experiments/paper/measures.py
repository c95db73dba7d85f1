"""The paper's metrics per task, method and sweep point, with intervals and paired verdicts.

Every interval is a 95% percentile bootstrap over prompts (:mod:`experiments.reporting.stats`).
Block efficiency has two estimates: the sampled one (tokens / target calls) and, in runs with
``probes=true``, the exact expected tokens of each drafted tree under the method's
verification rule summed over rounds, over calls (:mod:`rsd_jax.probes`). Both estimate the
same quantity; the probe removes the accept/reject coin flips of each round, so its interval
is narrower, and verdicts use it where both records have it.

A comparison of two methods is *paired*: the same prompts with the same PRNG keys, the
bootstrap resampling prompts jointly. Its verdict, fixed before looking at any data: ``A > B``
(``A < B``) when the 95% interval of the ratio lies wholly above (below) 1, ``tie`` otherwise,
and ``few`` below :data:`MIN_PROMPTS` common prompts (a bootstrap of one or two prompts has
no spread to speak of).
Token rates are compared as ratios to the AR of the same invocation (each method's own
AR), so two methods timed in different runs are never compared through raw seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.paper import load
from experiments.reporting import stats
from rsd_jax import metrics

SAMPLES = 2000
HALF_WIDTH_TARGET = 0.05  # the issue's +-5% on block efficiency
MIN_PROMPTS = 4  # fewer common prompts give no verdict


@dataclasses.dataclass(frozen=True)
class Point:
    """One method at one sweep point on one task of one draft regime.

    ``eta_best``/``eta_best_ci`` is the probe estimate where present, else the sampled one;
    ``half_width`` is its interval's half width over the estimate.
    """

    regime: str
    task: str
    label: str
    text: str
    name: str
    shape: str
    length: int
    budget: int
    x: int | None
    n: int
    eta: float
    eta_ci: list
    eta_probe: float | None
    eta_probe_ci: list | None
    eta_best: float
    eta_best_ci: list
    half_width: float
    mbsu: float
    mbsu_ci: list
    rate: float
    rate_ratio: float | None
    rate_ratio_ci: list | None
    acceptance_by_depth: list
    rank_accept: list


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``A / B`` of a metric over the prompts both ran, its interval and verdict."""

    a: str
    b: str
    ratio: float
    ci: list
    n: int
    verdict: str  # '>', '<', 'tie' or 'few'


def verdict(ci, n: int) -> str:
    if n < MIN_PROMPTS:
        return "few"
    lo, hi = ci
    return ">" if lo > 1.0 else "<" if hi < 1.0 else "tie"


def _records(wd: load.Workdir, text: str, task: str) -> list[dict]:
    return [r for p in wd.prompts(task) if (r := wd.record(p, text)) is not None]


def _has_probes(recs) -> bool:
    return bool(recs) and all(r.get("expected_tokens_walk") is not None for r in recs)


def _rank_accept(recs) -> list:
    sums = [np.asarray(r["rank_accept"], float) for r in recs if r.get("rank_accept")]
    if not sums:
        return []
    counts = np.sum([np.asarray(r["rank_count"], float) for r in recs if r.get("rank_count")], 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.sum(sums, 0) / counts
    return np.where(counts > 0, mean, np.nan).tolist()


def point(wd: load.Workdir, spec, task: str, samples: int = SAMPLES) -> Point | None:
    """The metrics of ``spec`` on ``task``; None when no prompt of the task ran it."""
    recs = _records(wd, spec.text, task)
    if not recs:
        return None
    idx = stats.boot_indices(len(recs), samples)
    calls = [r["target_calls"] for r in recs]
    eta, eta_ci = stats.ratio_ci([r["generated"] for r in recs], calls, idx)
    probe = probe_ci = None
    if _has_probes(recs):
        probe, probe_ci = stats.ratio_ci([r["expected_tokens_walk"] for r in recs], calls, idx)
    best, best_ci = (probe, probe_ci) if probe is not None else (eta, eta_ci)
    paired = [(r, a) for r in recs if (a := wd.ar_of(r)) is not None]
    ratio = ratio_ci = None
    if paired:
        pidx = stats.boot_indices(len(paired), samples, seed=2)
        ratio, ratio_ci = stats.paired_ratio(paired, "num_tokens", "seconds", pidx)
    hist = np.sum([r["accepted_hist"] for r in recs], axis=0).astype(float)
    rounds = max(hist.sum(), 1.0)
    return Point(
        regime=wd.regime,
        task=task,
        label=spec.label,
        text=spec.text,
        name=spec.name,
        shape=spec.shape,
        length=spec.length,
        budget=spec.budget,
        x=spec.sweep_value,
        n=len(recs),
        eta=eta,
        eta_ci=eta_ci,
        eta_probe=probe,
        eta_probe_ci=probe_ci,
        eta_best=best,
        eta_best_ci=best_ci,
        half_width=(best_ci[1] - best_ci[0]) / 2 / best,
        mbsu=metrics.mbsu(best, wd.r, spec.length),
        mbsu_ci=[metrics.mbsu(v, wd.r, spec.length) for v in best_ci],
        rate=sum(r["num_tokens"] for r in recs) / sum(r["seconds"] for r in recs),
        rate_ratio=ratio,
        rate_ratio_ci=ratio_ci,
        acceptance_by_depth=[float(hist[d:].sum() / rounds) for d in range(1, len(hist))],
        rank_accept=_rank_accept(recs),
    )


def points(wd: load.Workdir, perspective: str, samples: int = SAMPLES) -> list[Point]:
    """Every (task, spec) point of a perspective that has records."""
    out = []
    for task in wd.task_names:
        for spec in load.specs(wd, perspective):
            p = point(wd, spec, task, samples)
            if p is not None:
                out.append(p)
    return out


def eta_matrix(wd: load.Workdir, texts, task: str) -> np.ndarray:
    """``[prompts, len(texts), 2]``: (tokens, target calls) of each method on each prompt of
    ``task`` that all ``texts`` ran; tokens are the probes' expected tokens when every
    record has them, else the sampled ones."""
    rows = []
    for p in wd.prompts(task):
        recs = [wd.record(p, t) for t in texts]
        if all(r is not None for r in recs):
            rows.append(recs)
    if not rows:
        return np.zeros((0, len(texts), 2))
    probe = all(_has_probes(col) for col in zip(*rows, strict=True))
    num = "expected_tokens_walk" if probe else "generated"
    return np.array([[[r[num], r["target_calls"]] for r in recs] for recs in rows], float)


def paired_stat(m: np.ndarray, fn, samples: int = SAMPLES, seed: int = 4):
    """``fn(etas)`` of the per-method block efficiencies of ``eta_matrix`` rows, and its
    bootstrap interval with prompts resampled jointly. ``fn`` maps ``[..., methods]`` to
    ``[...]``."""
    etas = m[..., 0].sum(0) / m[..., 1].sum(0)
    idx = stats.boot_indices(len(m), samples, seed=seed)
    boot = m[idx]  # [samples, prompts, methods, 2]
    boot_etas = boot[..., 0].sum(1) / np.maximum(boot[..., 1].sum(1), 1e-12)
    return float(fn(etas)), stats.interval(fn(boot_etas))


def compare_eta(wd: load.Workdir, a: str, b: str, task: str, samples: int = SAMPLES):
    """Paired block-efficiency ratio of methods ``a`` over ``b`` on ``task`` (probe
    estimates when both have them); None without a common prompt."""
    m = eta_matrix(wd, [a, b], task)
    if not len(m):
        return None
    ratio, ci = paired_stat(m, lambda e: e[..., 0] / e[..., 1], samples)
    return Comparison(a, b, ratio, ci, len(m), verdict(ci, len(m)))


def compare_rate(wd: load.Workdir, a: str, b: str, task: str, samples: int = SAMPLES):
    """Paired ratio of ``a``'s token-rate ratio to its AR over ``b``'s (each against the AR
    of its own invocation, same prompt); None without a common prompt."""
    rows = []
    for p in wd.prompts(task):
        x, y = wd.record(p, a), wd.record(p, b)
        if x is None or y is None:
            continue
        ax, ay = wd.ar_of(x), wd.ar_of(y)
        if ax is None or ay is None:
            continue
        rows.append(
            [
                x["num_tokens"],
                x["seconds"],
                ax["num_tokens"],
                ax["seconds"],
                y["num_tokens"],
                y["seconds"],
                ay["num_tokens"],
                ay["seconds"],
            ]
        )
    if not rows:
        return None
    m = np.asarray(rows, float)
    idx = stats.boot_indices(len(rows), samples, seed=5)

    def ratio(s):
        sx = (s[..., 0].sum(-1) / s[..., 1].sum(-1)) / (s[..., 2].sum(-1) / s[..., 3].sum(-1))
        sy = (s[..., 4].sum(-1) / s[..., 5].sum(-1)) / (s[..., 6].sum(-1) / s[..., 7].sum(-1))
        return sx / sy

    ci = stats.interval(ratio(m[idx]))
    return Comparison(a, b, float(ratio(m)), ci, len(rows), verdict(ci, len(rows)))


def quality_gap(wd: load.Workdir, text: str, task: str, refs=None, samples: int = SAMPLES):
    """Mean ROUGE-2 F1 / BLEU of ``text`` minus AR's on the same prompts of ``task`` against
    ``refs`` (``{prompt key: reference}``; default the ShareGPT reply of each prompt), with
    its bootstrap interval; None where the task has no metric or no prompt pairs."""
    metric = stats.QUALITY.get(task)
    if metric is None:
        return None
    refs = _references(task, wd) if refs is None else refs
    diffs = []
    for p in wd.prompts(task):
        x, y = wd.record(p, text), wd.record(p, "ar")
        if x is None or y is None or not refs.get(p):
            continue
        diffs.append(
            stats.score(metric, x["text"], refs[p]) - stats.score(metric, y["text"], refs[p])
        )
    if not diffs:
        return None
    mean, ci = stats.mean_ci(diffs, samples)
    return dict(metric=metric, diff=mean, ci=ci, n=len(diffs), p=sign_flip_p(diffs))


def sign_flip_p(diffs, draws: int = 20_000) -> float:
    """Two-sided p-value of a paired sign-flip test of mean difference 0: under the null
    (two exact methods, so each prompt's difference is as likely negative as positive) every
    assignment of signs is equally likely. Exact enumeration up to 16 prompts, else
    ``draws`` random assignments (fixed seed). With 4 prompts the smallest possible p is
    2/16 = 0.125: so few prompts cannot show a difference, whatever the bootstrap says."""
    d = np.asarray(diffs, float)
    n = len(d)
    if n <= 16:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        signs = np.random.default_rng(6).choice([-1, 1], size=(draws, n))
    observed = abs(d.mean())
    return float(np.mean(np.abs((signs * d).mean(1)) >= observed - 1e-12))


def _references(task: str, wd: load.Workdir) -> dict[str, str]:
    from experiments.data import datasets

    num = len(wd.prompts(task))
    prompts = datasets.load_prompts(task, num, int(wd.config.get("seed", 0)))
    return {p.key: p.reference for p in prompts}
