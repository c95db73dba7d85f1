"""A restricted output head: a draft that scores only some ids, every method still exact.

A speculative method is lossless for *any* draft law, as long as the law recorded for a
drafted token is the law it was drawn from. So a draft may score only part of the
vocabulary: ids outside it get probability 0, are never drafted, and the target still
produces them (through rejection and residual sampling) with exactly its own probability.
Only acceptance changes, by the target mass that falls outside the kept ids.

The head of a small model with a large vocabulary is a large share of its weights (Qwen2.5
0.5B: 151,936 x 896 = 136M of 494M parameters, read on every draft call). Keeping the ids
that are most frequent in text like the prompts (:func:`models.drafts.frequent_ids`)
keeps most of the target's mass at a fraction of the head's cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from models.arch import decoder
from models.loaded import LoadedModel


def restrict_head(model: LoadedModel, ids: Sequence[int]) -> LoadedModel:
    """The same model scoring only ``ids`` plus its special ids (see the module doc).

    Args:
      model: a loaded model (params unstacked or stacked: only top-level params change).
      ids: ids to keep, in ``[0, valid_vocab_size)``; the special ids of the tokenizer and
        of the config (BOS, EOS, padding) are always kept.

    Returns:
      A LoadedModel whose config has ``head_vocab`` = the number of kept ids and whose
      params replace the output head (or, for tied embeddings, add one next to the
      embedding) by ``draft_head/kernel`` ``[D, V']`` (the kept columns) and
      ``draft_head_ids`` ``[V']``. Its forward still returns ``[B, T, V]`` logits.
    """
    c = model.config
    if c.head_vocab:
        raise ValueError(f"{c.name} already has a restricted head ({c.head_vocab} ids)")
    kept = {int(i) for i in ids}
    if not kept or min(kept) < 0 or max(kept) >= c.valid_vocab_size:
        raise ValueError(
            f"draft vocabulary ids must be a non-empty set in [0, {c.valid_vocab_size})"
        )
    specials = {c.bos_id, c.eos_id, c.pad_id}
    if model.tokenizer is not None:
        specials |= set(model.tokenizer.special_ids)
    kept |= {i for i in specials if 0 <= i < c.valid_vocab_size}
    order = jnp.asarray(sorted(kept), jnp.int32)
    params = dict(model.params)
    if c.tied_embeddings:
        kernel = params["embed"]["embedding"][order].T  # [D, V']
    else:
        kernel = params.pop("lm_head")["kernel"][:, order]
    params[decoder.HEAD] = {"kernel": jnp.asarray(kernel)}
    params[f"{decoder.HEAD}_ids"] = order
    return model._replace(config=c.replace(head_vocab=len(kept)), params=params)
