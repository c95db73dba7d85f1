"""Adapter from a loaded model to what `rsd_jax` consumes (`rsd_jax.Model`)."""

from __future__ import annotations

import functools

import jax.numpy as jnp

from models.arch import decoder, sharding
from rsd_jax.interface import Model


@functools.cache
def _fitted_forward(config, width: int):
    """`make_forward(config)` with its logits cut or padded (probability 0) to `width` ids."""
    forward = decoder.make_forward(config)

    def apply(params, tokens, positions, attention_mask, cache):
        logits, cache = forward(params, tokens, positions, attention_mask, cache)
        have = logits.shape[-1]
        if have > width:
            return logits[..., :width], cache
        pad = jnp.full(logits.shape[:-1] + (width - have,), decoder.MASK_VALUE, logits.dtype)
        return jnp.concatenate([logits, pad], axis=-1), cache

    return apply


def to_rsd_model(model, vocab_size: int | None = None):
    """Wraps a LoadedModel (or any object with `.config` and `.params`) for `rsd_jax`.

    The apply function is `decoder.make_forward(config)`, memoised per config, so two
    adapters of the same config share one function and thus one jit cache entry.
    ``vocab_size`` fits the logits to another width: a draft whose vocabulary differs from
    its target's only by padding rows (`loading.check_compatible` accepts such pairs) is
    cut to, or padded with probability-0 ids to, the target's width.

    Returns:
      rsd_jax.Model(apply, params, init_cache(batch, capacity), vocab_size,
      sharding, max_positions), `sharding` being the tensor-parallel rules of
      `models.arch.sharding` and `max_positions` the trained context (0 when unknown).
    """
    config = model.config
    width = vocab_size or config.vocab_size
    if width < config.valid_vocab_size:
        raise ValueError(f"cannot cut {config.name}'s logits to {width} ids: "
                         f"{config.valid_vocab_size} are valid")  # fmt: skip
    same = width == config.vocab_size
    return Model(
        apply=decoder.make_forward(config) if same else _fitted_forward(config, width),
        params=model.params,
        init_cache=functools.partial(decoder.init_cache, config),
        vocab_size=width,
        sharding=sharding.model_sharding(config),
        max_positions=config.max_positions,
    )
