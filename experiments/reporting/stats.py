"""Statistics of the reports: 95% percentile-bootstrap intervals over prompts, and the
quality scores (ROUGE-2 F1, sentence BLEU) of generated text against a reference."""

from __future__ import annotations

import numpy as np

QUALITY = {"summarise": "rouge2_f1", "translate": "bleu"}


def boot_indices(n: int, samples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(n, size=(samples, n))


def interval(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def ratio_ci(num, den, idx) -> tuple[float, list[float]]:
    """``sum(num) / sum(den)`` and its bootstrap interval over the rows ``idx`` resamples."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    est = float(num.sum() / den.sum())
    boot = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12)
    return est, interval(boot)


def paired_ratio(paired, num: str, den: str, idx) -> tuple[float, list[float]]:
    """``(sum x[num] / sum x[den]) / (sum a[num] / sum a[den])`` over pairs ``(x, a)`` of
    records on the same prompt, with its bootstrap interval (prompts resampled jointly)."""
    m = np.array([[x[num], x[den], a[num], a[den]] for x, a in paired], float)
    ratio = (m[:, 0].sum() / m[:, 1].sum()) / (m[:, 2].sum() / m[:, 3].sum())
    boot = (m[idx, 0].sum(1) / m[idx, 1].sum(1)) / (m[idx, 2].sum(1) / m[idx, 3].sum(1))
    return float(ratio), interval(boot)


def mean_ci(x, samples: int) -> tuple[float, list[float]]:
    x = np.asarray(x, float)
    idx = boot_indices(len(x), samples, seed=1)
    return float(x.mean()), interval(x[idx].mean(1))


def score(metric: str, hypothesis: str, reference: str) -> float:
    """ROUGE-2 F1 (0..1) or sentence BLEU (0..100) of one output."""
    if metric == "rouge2_f1":
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
        return float(scorer.score(reference, hypothesis)["rouge2"].fmeasure)
    if metric == "bleu":
        import sacrebleu

        return float(sacrebleu.sentence_bleu(hypothesis, [reference]).score)
    raise ValueError(f"unknown metric {metric!r}")
