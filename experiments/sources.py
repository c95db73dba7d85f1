"""Where the runner's models and prompts come from: real presets and datasets, or toys.

The runner takes a *model source* ``(config) -> Bundle`` and a *prompt source*
``(config, bundle) -> list[EncodedPrompt]``; tests and the notebook inject the toy ones
(n-gram tables behind the real engine), runs use :func:`real_models` / :func:`real_prompts`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from experiments import datasets
from rsd_jax import generation as gen

# The paper's sampling settings (docs/algorithms.md, Metrics): (temperature, top_p).
PAPER_SAMPLING = {"summarise": (0.3, 1.0), "translate": (0.3, 1.0)}
PAPER_DEFAULT = (1.0, 0.95)  # instruction/chat data; also used for code and continuation


class Bundle(NamedTuple):
    """Draft and target as the engine sees them, plus what the report needs.

    Attributes:
      target, draft: ``rsd_jax.Model`` (draft None only for AR-only runs).
      tokenizer: text <-> ids (``encode``/``decode``), or None for toy models.
      eos_id: stop id (-1: none).
      valid_vocab_size: ids at or beyond it get probability 0 (None: all valid).
      target_params, draft_params: parameter counts, an int8 weight counting a quarter (a
        float32 or bfloat16 weight counts 1 in both models). ``r`` of MBSU is
        their ratio, the ratio of the bytes one call of each reads.
      info: a JSON-able description (names, sizes) stored with the results.
    """

    target: gen.Model
    draft: gen.Model | None
    tokenizer: Any
    eos_id: int
    valid_vocab_size: int | None
    target_params: int
    draft_params: int
    info: dict


class EncodedPrompt(NamedTuple):
    """A tokenized prompt with its sampling setting and optional reference text."""

    key: str
    dataset: str
    ids: list[int]
    reference: str | None
    temperature: float
    top_p: float


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def float32_equivalent(params) -> int:
    """The parameter count, an int8 weight counting a quarter (the bytes it reads)."""
    return int(sum(x.size // 4 if x.dtype == np.int8 else x.size for x in jax.tree.leaves(params)))


def paper_sampling(dataset: str) -> tuple[float, float]:
    """The paper's ``(temperature, top_p)`` for ``dataset``."""
    return PAPER_SAMPLING.get(dataset, PAPER_DEFAULT)


def sampling_for(config, dataset: str) -> tuple[float, float]:
    """``(temperature, top_p)`` of ``dataset``'s prompts under the config's ``sampling``:
    the paper's per-dataset values (``'paper'``) or the config's own (``'fixed'``)."""
    if config["sampling"] == "paper":
        return paper_sampling(dataset)
    return float(config["temperature"]), float(config["top_p"])


def dataset_names(config) -> list[str]:
    names = [x.strip() for x in config.dataset.split("+") if x.strip()]
    for name in names:
        if name not in datasets.DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose from {datasets.DATASETS}")
    if not names:
        raise ValueError("config key 'dataset' names no dataset")
    return names


def per_dataset_counts(config) -> dict[str, int]:
    """``num_prompts`` (a total) spread round-robin over the datasets in config order.

    Counts only grow with ``num_prompts``, and each dataset's selection is a prefix of a
    seeded permutation, so a larger ``num_prompts`` extends a smaller run (resumable).
    """
    names = dataset_names(config)
    if config.num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {config.num_prompts}")
    base, extra = divmod(config.num_prompts, len(names))
    return {name: base + (i < extra) for i, name in enumerate(names)}


def draft_vocab_ids(tokenizer, vocab_size: int, keep: int) -> np.ndarray:
    """The ``keep`` ids most frequent in :func:`experiments.datasets.vocabulary_corpus`.

    Counts are computed once per tokenizer and cached next to the datasets
    (``draft_vocab/<tokenizer fingerprint>.npy``).
    """
    from models import draft_vocab

    if tokenizer is None:
        raise ValueError("draft_vocab needs the draft's tokenizer to count token ids")
    path = datasets.cache_dir() / "draft_vocab" / f"{tokenizer.fingerprint()[:16]}.npy"
    if path.is_file():
        counts = np.load(path)
    else:
        counts = draft_vocab.count_ids(tokenizer, datasets.vocabulary_corpus(), vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, counts)
        tmp.replace(path)
    if len(counts) != vocab_size:
        raise ValueError(f"{path} counts {len(counts)} ids, the draft has {vocab_size}")
    return draft_vocab.frequent_ids(counts, keep)


def real_models(config) -> Bundle:
    """Loads ``config.draft`` and ``config.target`` (presets or local paths), checks
    that they share a tokenizer, restricts the draft's head to ``config.draft_vocab``
    ids when it is not 0 (:mod:`models.draft_vocab`) and stores the weights as
    ``target_weights`` / ``draft_weights`` say (:mod:`models.quantize`)."""
    from models import adapter, draft_vocab, loading, quantize

    kw = dict(dtype=config.dtype, scan_layers=config.scan_layers)
    target = loading.load_model(config.target, **kw)
    draft = loading.load_model(config.draft, **kw)
    loading.check_compatible(draft, target)
    if config.draft_vocab and not draft.config.head_vocab:
        # A draft exported with its own restricted head (e.g. by the distill job) keeps it.
        ids = draft_vocab_ids(draft.tokenizer, draft.config.valid_vocab_size, config.draft_vocab)
        draft = draft_vocab.restrict_head(draft, ids)
    target = quantize.convert(target, config.target_weights)
    draft = quantize.convert(draft, config.draft_weights)
    tok = target.tokenizer
    eos = tok.eos_id if tok is not None else target.config.eos_id
    tp, dp = float32_equivalent(target.params), float32_equivalent(draft.params)
    info = {
        "target": config.target,
        "draft": config.draft,
        "target_params": tp,
        "draft_params": dp,
        "target_config": target.config.to_json(),
        "draft_config": draft.config.to_json(),
    }
    for role in ("target", "draft"):  # local files: results are tied to their content
        digest = loading.content_digest(config[role])
        if digest is not None:
            info[f"{role}_sha256"] = digest
    return Bundle(
        adapter.to_rsd_model(target),
        adapter.to_rsd_model(draft, vocab_size=target.config.vocab_size),
        tok,
        int(eos),
        int(target.config.valid_vocab_size),
        tp,
        dp,
        info,
    )


def real_prompts(config, bundle: Bundle) -> list[EncodedPrompt]:
    """``num_prompts`` prompts spread over the datasets of ``config``, tokenized."""
    if bundle.tokenizer is None:
        raise ValueError("real prompts need a tokenizer; the target has none")
    out = []
    for name, num in per_dataset_counts(config).items():
        if not num:
            continue
        temperature, top_p = sampling_for(config, name)
        for p in datasets.load_prompts(name, num, config.seed, config.shakespeare_lines):
            ids = datasets.encode_prompt(
                p, bundle.tokenizer, config.max_prompt_tokens, config.chat_template
            )
            out.append(EncodedPrompt(p.key, name, ids, p.reference, temperature, top_p))
    return out


# ----------------------------------------------------------------------------- toys


class ToyTokenizer:
    """Ids <-> space-separated words ``t0 t1 ...`` (so quality scores can run on toys)."""

    def decode(self, ids, skip_special: bool = False) -> str:
        del skip_special
        return " ".join(f"t{int(i)}" for i in ids)


def toy_sources(vocab: int = 8, order: int = 3, agreement: float = 0.7, seed: int = 0):
    """``(model_source, prompt_source)`` over n-gram tables with known conditionals.

    The target is a random order-``order`` table; the draft mixes it with another
    (``agreement``). Prompts are random id lists (``num_prompts`` in all, spread over the
    config's datasets); summarise/translate prompts get a random reference for the scores.
    """
    from models import toy

    def model_source(config) -> Bundle:
        del config
        rng = np.random.default_rng(seed)
        target, draft = toy.random_pair(rng, vocab, order, alpha=0.5, agreement=agreement)
        # r = 0.25: pretend the draft has a quarter of the target's parameters.
        info = dict(target="toy-target", draft="toy-draft", vocab=vocab, order=order, seed=seed)
        info["agreement"] = agreement
        models = toy.as_model(target), toy.as_model(draft)
        return Bundle(*models, ToyTokenizer(), -1, None, 400, 100, info)

    def prompt_source(config, bundle) -> list[EncodedPrompt]:
        del bundle
        out = []
        for name, num in per_dataset_counts(config).items():
            rng = np.random.default_rng([config.seed, len(name), ord(name[0])])
            temperature, top_p = sampling_for(config, name)
            for i in range(num):
                ids = [int(x) for x in rng.integers(vocab, size=int(rng.integers(2, 7)))]
                ref = None
                if name in ("summarise", "translate"):
                    ref = ToyTokenizer().decode(rng.integers(vocab, size=12))
                key = f"{name}/s{config.seed}-{i}"  # the ids depend on the seed, so does the key
                out.append(EncodedPrompt(key, name, ids, ref, temperature, top_p))
        return out

    return model_source, prompt_source
