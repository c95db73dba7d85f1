"""Where the runner's models and prompts come from: real presets and datasets, or toys.

The job takes a *model source* ``(settings.models) -> Bundle`` and a *prompt source*
``(settings, bundle) -> list[EncodedPrompt]`` (:class:`experiments.speculative.settings.Settings`);
tests and the notebook inject the toy ones (n-gram tables behind the real engine), runs use
:func:`real_models` / :func:`real_prompts`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from experiments.data import datasets, vocab
from experiments.speculative.settings import Models, Settings
from rsd_jax import generation as gen


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
      info: a JSON-able description (names, sizes, the dtype and weight layouts used)
        stored with the results.
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


def resolve(setup: Models) -> Models:
    """``setup`` with ``auto`` dtype and weight layouts decided for this machine
    (:func:`models.arch.quantize.auto_layout`, :func:`models.arch.quantize.auto_dtype`)."""
    from models.arch import quantize

    backend = jax.default_backend()
    explicit = {setup.target_weights, setup.draft_weights} - {quantize.AUTO}
    dtype = setup.dtype
    if dtype == quantize.AUTO:
        dtype = quantize.auto_dtype(backend, laid_out=bool(explicit - {"float"}))
    one = setup.mesh is None
    weights = {
        role: quantize.auto_layout(role, dtype, backend, one) if w == quantize.AUTO else w
        for role, w in (("target", setup.target_weights), ("draft", setup.draft_weights))
    }
    return dataclasses.replace(
        setup, dtype=dtype, target_weights=weights["target"], draft_weights=weights["draft"]
    )


def check_memory(setup: Models) -> int:
    """Raises :class:`experiments.common.memory.InsufficientMemoryError` before loading
    when the pair would not fit this machine's available memory; returns the estimate."""
    from experiments.common import memory
    from models import loading

    roles = [("target", setup.target, setup.target_weights)]
    roles += [("draft", setup.draft, setup.draft_weights)] if setup.draft else []
    models = [
        (name, loading.load_model_info(name).config, setup.dtype, weights)
        for _, name, weights in roles
    ]
    return memory.check(models)


def real_models(setup: Models) -> Bundle:
    """Loads ``setup.target`` and ``setup.draft`` (presets or local paths; ``draft=""``: none,
    AR only), checks that they share a tokenizer, restricts the draft's head to
    ``setup.draft_vocab`` ids when it is not 0 (:mod:`models.arch.head`) and stores the
    weights as ``target_weights`` / ``draft_weights`` say (:mod:`models.arch.quantize`).

    Raises:
      experiments.common.memory.InsufficientMemoryError: the pair would not fit the
        memory available (checked before loading).
      models.errors.ModelFileError: a name that is neither a preset nor a model file.
      models.errors.IncompatibleModelsError: the tokenizers differ (the first difference
        named).
    """
    from models import adapter, loading
    from models.arch import head as head_lib
    from models.arch import quantize

    setup = resolve(setup)
    check_memory(setup)
    if setup.draft:  # tokenizers first, from the files' metadata: before any weight loads
        loading.check_compatible(
            loading.load_model_info(setup.draft), loading.load_model_info(setup.target)
        )
    # One model at a time, each stored in its layout tensor by tensor as it loads: the peak
    # memory is the models' final size plus one matrix in two layouts (docs/speed.md).
    kw = dict(dtype=setup.dtype, scan_layers=setup.scan_layers)
    target = loading.load_model(setup.target, weights=setup.target_weights, **kw)
    draft = None
    if setup.draft:
        restrict = bool(setup.draft_vocab)  # the head is cut from the float weights
        weights = "float" if restrict else setup.draft_weights
        draft = loading.load_model(setup.draft, weights=weights, **kw)
        if restrict and not draft.config.head_vocab:
            # A draft exported with its own restricted head (the distill job's) keeps it.
            ids = vocab.draft_vocab_ids(
                draft.tokenizer, draft.config.valid_vocab_size, setup.draft_vocab
            )
            draft = head_lib.restrict_head(draft, ids)
        if restrict:
            draft = quantize.convert(draft, setup.draft_weights, consume=True)
    tok = target.tokenizer
    eos = tok.eos_id if tok is not None else target.config.eos_id
    tp = float32_equivalent(target.params)
    dp = 0 if draft is None else float32_equivalent(draft.params)
    info = {
        "target": setup.target,
        "draft": setup.draft,
        "target_params": tp,
        "draft_params": dp,
        "target_config": target.config.to_json(),
        "draft_config": None if draft is None else draft.config.to_json(),
        "layout": dict(
            dtype=setup.dtype,
            target_weights=setup.target_weights,
            draft_weights=setup.draft_weights,
        ),
    }
    for role in ("target", "draft"):  # local files: results are tied to their content
        name = getattr(setup, role)
        digest = loading.content_digest(name) if name else None
        if digest is not None:
            info[f"{role}_sha256"] = digest
    return Bundle(
        adapter.to_rsd_model(target),
        None if draft is None else adapter.to_rsd_model(draft, vocab_size=target.config.vocab_size),
        tok,
        int(eos),
        int(target.config.valid_vocab_size),
        tp,
        dp,
        info,
    )


def real_prompts(settings: Settings, bundle: Bundle) -> list[EncodedPrompt]:
    """``num_prompts`` prompts spread over the datasets of ``settings``, tokenized."""
    if bundle.tokenizer is None:
        raise ValueError("real prompts need a tokenizer; the target has none")
    s = settings.prompts
    out = []
    for name, num in s.per_dataset().items():
        if not num:
            continue
        temperature, top_p = settings.sampling.for_dataset(name)
        for p in datasets.load_prompts(name, num, s.seed, s.shakespeare_lines):
            ids = datasets.encode_prompt(p, bundle.tokenizer, s.max_prompt_tokens, s.chat_template)
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
    settings' datasets); summarise/translate prompts get a random reference for the scores.
    """
    from models import toy

    def model_source(models: Models) -> Bundle:
        del models
        rng = np.random.default_rng(seed)
        target, draft = toy.random_pair(rng, vocab, order, alpha=0.5, agreement=agreement)
        # r = 0.25: pretend the draft has a quarter of the target's parameters.
        info = dict(target="toy-target", draft="toy-draft", vocab=vocab, order=order, seed=seed)
        info["agreement"] = agreement
        models = toy.as_model(target), toy.as_model(draft)
        return Bundle(*models, ToyTokenizer(), -1, None, 400, 100, info)

    def prompt_source(settings: Settings, bundle) -> list[EncodedPrompt]:
        del bundle
        seed = settings.prompts.seed
        out = []
        for name, num in settings.prompts.per_dataset().items():
            rng = np.random.default_rng([seed, len(name), ord(name[0])])
            temperature, top_p = settings.sampling.for_dataset(name)
            for i in range(num):
                ids = [int(x) for x in rng.integers(vocab, size=int(rng.integers(2, 7)))]
                ref = None
                if name in ("summarise", "translate"):
                    ref = ToyTokenizer().decode(rng.integers(vocab, size=12))
                key = f"{name}/s{seed}-{i}"  # the ids depend on the seed, so does the key
                out.append(EncodedPrompt(key, name, ids, ref, temperature, top_p))
        return out

    return model_source, prompt_source
