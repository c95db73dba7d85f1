"""Adapter from a loaded model to what `rsd_jax` consumes (`rsd_jax.generate.Model`)."""

from __future__ import annotations

import functools

from models import decoder, sharding


def to_rsd_model(model):
    """Wraps a LoadedModel (or any object with `.config` and `.params`) for `rsd_jax`.

    The apply function is `decoder.make_forward(config)`, memoised per config, so two
    adapters of the same config share one function and thus one jit cache entry.

    Returns:
      rsd_jax.generate.Model(apply, params, init_cache(batch, capacity), vocab_size,
      sharding, max_positions), `sharding` being the tensor-parallel rules of
      `models.sharding` and `max_positions` the trained context (0 when unknown).
    """
    from rsd_jax.generate import Model

    config = model.config
    return Model(
        apply=decoder.make_forward(config),
        params=model.params,
        init_cache=functools.partial(decoder.init_cache, config),
        vocab_size=config.vocab_size,
        sharding=sharding.model_sharding(config),
        max_positions=config.max_positions,
    )
