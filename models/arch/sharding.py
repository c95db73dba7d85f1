"""Tensor-parallel partition rules for the decoder (`models.arch.decoder`) on a (data, model) mesh.

The model axis splits every matmul the Megatron way, so that one block needs one all-reduce
after attention and one after the MLP and no weight is ever gathered:

- q/k/v projections are column-parallel over heads (kv heads for k/v); o is row-parallel
  (sharded on its input dim, heads x head_dim).
- MLP gate/up are column-parallel over the hidden dim; down is row-parallel.
- The embedding and the output head are optionally vocabulary-parallel (rows of the
  embedding, columns of the head).
- Norm scales are replicated.
- With `ModelConfig.scan_layers` the blocks' params are stacked over layers
  (`decoder.LAYERS`): the layer axis comes first and is never split, so every layer's slice
  keeps the layout above.

A dimension is only split when it divides evenly over the model axis; otherwise that weight
is replicated (correct, just not split). Attention is split only when the kv-head count
divides evenly (query heads come in groups of heads / kv_heads per kv head, so they follow);
otherwise q, k, v and o are all replicated. The KV cache `[layers, B, S, K, E]` puts B on
"data" and the kv heads K on "model" when attention is split.

`model_sharding(config)(mesh)` is what `rsd_jax.Model.sharding` expects
(`models.adapter.to_rsd_model` sets it).
"""

from __future__ import annotations

import functools
import re

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from models.arch import decoder
from models.arch.config import ModelConfig
from rsd_jax.sharding import DATA, MODEL, ModelSharding


def _split(size: int, model: int):
    """MODEL if a dimension of `size` splits evenly over the model axis, else None."""
    return MODEL if size % model == 0 and model > 1 else None


def rules(config: ModelConfig, model: int, vocab_parallel: bool = True) -> list[tuple[str, P]]:
    """(regex over the param path 'layers_0/attn/q/kernel', PartitionSpec) pairs, in order.

    The specs are per layer; `param_specs` puts None in front for a stacked layer axis.

    Args:
      config: the model's config.
      model: size of the mesh's model axis.
      vocab_parallel: split the embedding / head over the vocabulary.
    """
    # Attention splits over kv heads (and their query groups) or not at all: with q split but
    # k/v whole, the grouped-query einsum would split the kv-head axis of the cache anyway,
    # and XLA would gather the whole cache back to its layout after every call.
    kv = _split(config.kv_heads, model)
    heads = kv
    mlp = _split(config.mlp_hidden, model)
    vocab = _split(config.vocab_size, model) if vocab_parallel else None
    return [
        (r"attn/q/kernel$", P(None, heads)),  # [D, H*E]
        (r"attn/q/bias$", P(heads)),
        (r"attn/[kv]/kernel$", P(None, kv)),  # [D, K*E]
        (r"attn/[kv]/bias$", P(kv)),
        (r"attn/o/kernel$", P(heads, None)),  # [H*E, D]
        (r"attn/o/bias$", P()),  # [D] (OPT)
        (r"mlp/(gate|up)/kernel$", P(None, mlp)),  # [D, F]
        (r"mlp/(gate|up)/bias$", P(mlp)),  # [F] (OPT)
        (r"mlp/down/kernel$", P(mlp, None)),  # [F, D]
        (r"mlp/down/bias$", P()),  # [D] (OPT)
        (r"pos_embed/embedding$", P()),  # [positions + 2, D] learned positions (OPT): whole
        (r"project_(in|out)/kernel$", P()),  # [embed_dim, D] / [D, embed_dim] (OPT): whole
        (r"embed/embedding$", P(vocab, None)),  # [V, D]
        (r"lm_head/kernel$", P(None, vocab)),  # [D, V]
        (rf"{decoder.HEAD}/kernel$", P()),  # [D, V'] restricted draft head: small, whole
        (rf"{decoder.HEAD}_ids$", P()),  # [V'] the ids it scores
        (r"norm/(scale|bias)$", P()),  # every norm, incl. q/k and post norms, LayerNorm bias
    ]


def param_specs(params, config: ModelConfig, model: int, vocab_parallel: bool = True):
    """A pytree of PartitionSpecs matching `params`.

    Raises:
      ValueError: a parameter no rule matches (new weights must get a rule, never be
        replicated silently).
    """
    if config.weights != "float":
        raise ValueError(
            f"tensor-parallel rules cover float weights only, not weights={config.weights!r} "
            "(tiled and int8 weights are a one-device CPU layout)"
        )
    table = [(re.compile(rx), spec) for rx, spec in rules(config, model, vocab_parallel)]

    def spec_of(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        for rx, spec in table:
            if rx.search(name):
                if name.startswith(f"{decoder.LAYERS}/"):
                    spec = P(None, *spec)  # [L, ...]: the layer axis stays whole
                if len(spec) > leaf.ndim:
                    raise ValueError(f"rule {rx.pattern} has rank {len(spec)}; {name} {leaf.shape}")
                return spec
        raise ValueError(f"no partition rule for parameter {name!r} {leaf.shape}")

    return jax.tree_util.tree_map_with_path(spec_of, params)


def cache_spec(config: ModelConfig, model: int) -> P:
    """PartitionSpec of the cache's k/v `[layers, B, S, K, E]`: B on data, K on model."""
    return P(None, DATA, None, _split(config.kv_heads, model), None)


def _model_sharding(config: ModelConfig, vocab_parallel: bool, params, mesh: Mesh):
    model = mesh.shape[MODEL]
    return ModelSharding(
        params=param_specs(params, config, model, vocab_parallel),
        cache=cache_spec(config, model),
    )


def model_sharding(config: ModelConfig, vocab_parallel: bool = True):
    """`(params, mesh) -> rsd_jax.sharding.ModelSharding` for a decoder of `config`."""
    return functools.partial(_model_sharding, config, vocab_parallel)
