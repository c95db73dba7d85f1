"""Small drafts for a target: pruned from a larger draft or built from scratch, and the ids
a restricted head keeps.

A draft must share the target's tokenizer and produce laws over the same ids; nothing
else about it matters to exactness (any draft law keeps speculative decoding lossless).
What makes it useful is a low cost per call relative to the target (r) and laws close to
the target's. `prune` keeps some blocks of a larger draft (embedding, final norm and head
unchanged), a cheap starting point that training (:mod:`experiments.distill`) then pulls
towards the target; `scratch` builds a freshly initialised decoder of the target's
architecture. `frequent_ids` picks the ids a restricted head keeps
(:func:`models.arch.head.restrict_head`). :func:`models.loading.draft_dir.export` writes a
draft so that every loader and config can use it (`draft=<dir>`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import numpy as np

from models.arch import decoder
from models.loaded import LoadedModel


def count_ids(tokenizer, texts: Iterable[str], vocab_size: int) -> np.ndarray:
    """``[vocab_size]`` int64 counts of every id in the tokenized ``texts``."""
    counts = np.zeros(vocab_size, np.int64)
    for text in texts:
        ids = np.asarray(tokenizer.encode(text), np.int64)
        counts += np.bincount(ids[ids < vocab_size], minlength=vocab_size)
    return counts


def frequent_ids(counts: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` most counted ids, ascending (ties broken towards lower ids)."""
    if not 0 < keep <= len(counts):
        raise ValueError(f"draft vocabulary {keep} not in [1, {len(counts)}]")
    order = np.lexsort((np.arange(len(counts)), -counts))  # by count desc, then id asc
    return np.sort(order[:keep]).astype(np.int32)


def prune(model: LoadedModel, keep_layers: Sequence[int]) -> LoadedModel:
    """The model with only the blocks ``keep_layers`` (in that order), renumbered 0..k-1.

    Args:
      model: a loaded model with unstacked params (``layers_3/...``).
      keep_layers: distinct block indices in ``[0, layers)``.

    Returns:
      A LoadedModel of ``len(keep_layers)`` blocks sharing every other parameter.
    """
    c = model.config
    keep = [int(i) for i in keep_layers]
    if not keep or len(set(keep)) != len(keep) or min(keep) < 0 or max(keep) >= c.layers:
        raise ValueError(f"keep_layers must be distinct blocks in [0, {c.layers}), got {keep}")
    if c.scan_layers:
        raise ValueError("prune needs unstacked params (load with scan_layers=False)")
    params = {k: v for k, v in model.params.items() if not k.startswith(f"{decoder.LAYERS}_")}
    for new, old in enumerate(keep):
        params[f"{decoder.LAYERS}_{new}"] = model.params[f"{decoder.LAYERS}_{old}"]
    name = f"{c.name or c.arch} blocks {'+'.join(map(str, keep))}"
    types = tuple(c.layer_types[i] for i in keep) if c.layer_types else ()  # Gemma: per block
    config = c.replace(layers=len(keep), name=name, layer_types=types)
    return model._replace(config=config, params=params)


def scratch(
    base: LoadedModel,
    key: jax.Array,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    mlp_hidden: int,
    head_dim: int = 0,
) -> LoadedModel:
    """A freshly initialised decoder of ``base``'s architecture, vocabulary and tokenizer.

    Args:
      base: the model whose architecture, vocabulary, special ids and tokenizer it shares.
      key: PRNG key of the initialisation (Flax defaults, norms at 1).
      layers, hidden, heads, kv_heads, mlp_hidden: the sizes; ``heads % kv_heads == 0``.
      head_dim: per-head width (0: ``hidden // heads``).
    """
    if min(layers, hidden, heads, kv_heads, mlp_hidden) < 1 or heads % kv_heads:
        raise ValueError(
            f"bad student sizes layers={layers} hidden={hidden} heads={heads} "
            f"kv_heads={kv_heads} mlp_hidden={mlp_hidden} (heads must divide by kv_heads)"
        )
    config = base.config.replace(
        layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
        head_dim=head_dim or hidden // heads, mlp_hidden=mlp_hidden, head_vocab=0,
        scan_layers=False, name=f"{base.config.arch} student {layers}x{hidden}",
    )  # fmt: skip
    params = decoder.init_params(config, key, noise=0.0)
    return LoadedModel(config, params, base.tokenizer)
