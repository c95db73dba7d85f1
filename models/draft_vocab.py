"""Drafts with a restricted output vocabulary: a cheaper draft call, every method still exact.

A speculative method is lossless for *any* draft law, as long as the law recorded for a
drafted token is the law it was drawn from. So a draft may score only part of the
vocabulary: ids outside it get probability 0, are never drafted, and the target still
produces them (through rejection and residual sampling) with exactly its own probability.
Only acceptance changes, by the target mass that falls outside the kept ids.

The head of a small model with a large vocabulary is a large share of its weights (Qwen2.5
0.5B: 151,936 x 896 = 136M of 494M parameters, read on every draft call). Byte-level BPE
assigns ids in merge order, and merges are learned most-frequent first, so the lowest ids are
the most frequent pieces of the tokenizer's training text: keeping the ids below N (plus the
special tokens, EOS above all) keeps most of the mass at a fraction of the head.
"""

from __future__ import annotations

import jax.numpy as jnp

from models import decoder
from models.loading import LoadedModel


def restrict_head(model: LoadedModel, keep: int) -> LoadedModel:
    """The same model scoring only ids `< keep` plus its special ids (see the module doc).

    Args:
      model: a loaded model (params unstacked or stacked: only top-level params change).
      keep: number of lowest ids to keep, in `[1, valid_vocab_size]`; the special ids of
        the tokenizer and of the config (BOS, EOS, padding) are always kept.

    Returns:
      A LoadedModel whose config has `head_vocab=keep` and whose params replace the output
      head (or, for tied embeddings, add one next to the embedding) by `draft_head/kernel`
      `[D, V']`, the kept columns. Its forward still returns `[B, T, V]` logits.
    """
    c = model.config
    if c.head_vocab:
        raise ValueError(f"{c.name} already has a restricted head (head_vocab={c.head_vocab})")
    if not 0 < keep <= c.valid_vocab_size:
        raise ValueError(f"draft vocabulary {keep} not in [1, {c.valid_vocab_size}]")
    specials = {c.bos_id, c.eos_id, c.pad_id}
    if model.tokenizer is not None:
        specials |= set(model.tokenizer.special_ids)
    extra = tuple(sorted(i for i in specials if keep <= i < c.valid_vocab_size))
    config = c.replace(head_vocab=keep, head_extra=extra)
    ids = jnp.asarray(decoder.head_ids(config))
    params = dict(model.params)
    if c.tied_embeddings:
        kernel = params["embed"]["embedding"][ids].T  # [D, V']
    else:
        kernel = params.pop("lm_head")["kernel"][:, ids]
    params[decoder.HEAD] = {"kernel": jnp.asarray(kernel)}
    return model._replace(config=config, params=params)
