"""Small drafts for a target: built by pruning an existing draft or from scratch, and
exported so that every loader and config can use them (`draft=<dir>`).

A draft must share the target's tokenizer and produce laws over the same ids; nothing
else about it matters to exactness (any draft law keeps speculative decoding lossless).
What makes it useful is a low cost per call relative to the target (r) and laws close to
the target's. `prune` keeps some blocks of a larger draft (embedding, final norm and head
unchanged), a cheap starting point that training (`experiments.distill`) then pulls
towards the target; `scratch` builds a freshly initialised decoder of the target's
architecture. `export` writes an HF-layout directory (config.json, model.safetensors,
tokenizer files, plus `draft_head.safetensors` for a restricted head) that
`models.load_model` reads back with identical logits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from models import decoder, draft_vocab, hf_loader
from models.loading import LoadedModel


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


HEAD_FILE = "draft_head.safetensors"


def export(model: LoadedModel, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Writes ``model`` as an HF-layout directory that `models.load_model` reads back.

    config.json and model.safetensors follow transformers' layout. A restricted head
    (`ModelConfig.head_vocab`) goes to ``draft_head.safetensors`` (kernel ``[V', D]`` and
    the id of each row); its config.json then declares a tied head, so transformers, which
    ignores that file, still loads a working (full-vocabulary, untrained-head) model.
    ``rsd_jax.json`` holds the valid vocabulary size and ``extra`` (e.g. how the draft was
    trained).
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    c = model.config
    params = jax.tree.map(np.asarray, model.params)
    if c.head_vocab:
        params = dict(params)
        head = params.pop(decoder.HEAD)["kernel"]
        ids = params.pop(f"{decoder.HEAD}_ids")
        save_file(
            {"weight": np.ascontiguousarray(np.asarray(head, np.float32).T),
             "ids": np.asarray(ids, np.int32)},
            str(directory / HEAD_FILE),
        )  # fmt: skip
        if "lm_head" in params:
            raise ValueError("a restricted head replaces lm_head; found both")
        c = c.replace(head_vocab=0, tied_embeddings=True)
    hf_loader.save_hf_dir(c.replace(dtype="float32"), params, directory)
    if model.tokenizer is not None:
        model.tokenizer.save(directory)
    # The exported tokenizer lists padding ids as tokens, so the loader would count them
    # valid; the true count travels in rsd_jax.json (see `load_extras`).
    extra = (extra or {}) | {"valid_vocab_size": model.config.valid_vocab_size}
    (directory / EXTRAS_FILE).write_text(json.dumps(extra, indent=2, sort_keys=True))
    return directory


EXTRAS_FILE = "rsd_jax.json"


def load_extras(model: LoadedModel, directory: str | os.PathLike) -> LoadedModel:
    """Applies what `export` adds to the HF layout, when present in ``directory``: the
    valid vocabulary size of ``rsd_jax.json`` and the restricted head of
    ``draft_head.safetensors``; returns ``model`` unchanged for a plain HF directory."""
    from safetensors.numpy import load_file

    extras = Path(directory) / EXTRAS_FILE
    if extras.is_file():
        valid = json.loads(extras.read_text()).get("valid_vocab_size")
        if valid is not None:
            c = model.config
            model = model._replace(config=c.replace(valid_vocab_size=min(int(valid), c.vocab_size)))
    path = Path(directory) / HEAD_FILE
    if not path.is_file():
        return model
    tensors = load_file(str(path))
    ids = np.asarray(tensors["ids"], np.int64)
    restricted = draft_vocab.restrict_head(model, ids)
    if restricted.config.head_vocab != len(ids):  # specials would have been added
        raise ValueError(f"{path}: the head's ids lack special ids of the tokenizer")
    dt = jnp.dtype(model.config.dtype)
    params = dict(restricted.params)
    params[decoder.HEAD] = {"kernel": jnp.asarray(tensors["weight"].T, dt)}
    return restricted._replace(params=params)
