"""The directory of an exported draft: the HF layout plus what rsd_jax adds to it.

:func:`export` writes config.json, model.safetensors and the tokenizer files (transformers'
layout), ``draft_head.safetensors`` for a restricted head (:mod:`models.arch.head`) and
``rsd_jax.json`` (the valid vocabulary size and how the draft was made);
:func:`load_extras` applies the last two when :func:`models.loading.load_model` reads the
directory back, with identical logits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from models.arch import decoder
from models.arch.head import restrict_head
from models.loaded import LoadedModel
from models.loading import hf_loader

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


def extras_config(config, directory: str | os.PathLike):
    """``config`` with the valid vocabulary size of ``directory``'s ``rsd_jax.json``, when
    there is one (what `load_model_info` needs of an exported draft; no weights read)."""
    extras = Path(directory) / EXTRAS_FILE
    if not extras.is_file():
        return config
    valid = json.loads(extras.read_text()).get("valid_vocab_size")
    if valid is None:
        return config
    return config.replace(valid_vocab_size=min(int(valid), config.vocab_size))


def load_extras(model: LoadedModel, directory: str | os.PathLike) -> LoadedModel:
    """Applies what `export` adds to the HF layout, when present in ``directory``: the
    valid vocabulary size of ``rsd_jax.json`` and the restricted head of
    ``draft_head.safetensors``; returns ``model`` unchanged for a plain HF directory."""
    from safetensors.numpy import load_file

    model = model._replace(config=extras_config(model.config, directory))
    path = Path(directory) / HEAD_FILE
    if not path.is_file():
        return model
    tensors = load_file(str(path))
    ids = np.asarray(tensors["ids"], np.int64)
    restricted = restrict_head(model, ids)
    if restricted.config.head_vocab != len(ids):  # specials would have been added
        raise ValueError(f"{path}: the head's ids lack special ids of the tokenizer")
    dt = jnp.dtype(model.config.dtype)
    params = dict(restricted.params)
    params[decoder.HEAD] = {"kernel": jnp.asarray(tensors["weight"].T, dt)}
    return restricted._replace(params=params)
