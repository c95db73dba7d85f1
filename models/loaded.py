"""`LoadedModel`: a decoder's config, its params and its tokenizer, as the loaders return them."""

from __future__ import annotations

from typing import Any, NamedTuple

from models.arch.config import ModelConfig


class LoadedModel(NamedTuple):
    """What `load_model` returns; unpacks as `config, params, tokenizer = load_model(...)`."""

    config: ModelConfig
    params: Any
    tokenizer: Any  # models.loading.tokenizer.Tokenizer, or None
