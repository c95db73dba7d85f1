"""The ids a restricted draft head keeps: the most frequent in text like the prompts.

Counts are computed once per tokenizer on :func:`experiments.data.datasets.vocabulary_corpus`
and cached next to the datasets; :func:`models.arch.head.restrict_head` then keeps the ids.
"""

from __future__ import annotations

import numpy as np

from experiments.data import datasets


def draft_vocab_ids(tokenizer, vocab_size: int, keep: int) -> np.ndarray:
    """The ``keep`` ids most frequent in :func:`experiments.data.datasets.vocabulary_corpus`.

    Counts are computed once per tokenizer and cached next to the datasets
    (``draft_vocab/<tokenizer fingerprint>.npy``).
    """
    from models import drafts

    if tokenizer is None:
        raise ValueError("draft_vocab needs the draft's tokenizer to count token ids")
    path = datasets.cache_dir() / "draft_vocab" / f"{tokenizer.fingerprint()[:16]}.npy"
    if path.is_file():
        counts = np.load(path)
    else:
        counts = drafts.count_ids(tokenizer, datasets.vocabulary_corpus(), vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, counts)
        tmp.replace(path)
    if len(counts) != vocab_size:
        raise ValueError(f"{path} counts {len(counts)} ids, the draft has {vocab_size}")
    return drafts.frequent_ids(counts, keep)
