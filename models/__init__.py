"""Models: configs, a Flax decoder (llama and its variants) with a KV cache, loaders, tokenizers.

The public entry points are re-exported here; see each module for details. Presets are
prepared with `python -m models.prepare NAME ...` (models/prepare.py; in Python:
`models.presets.prepare(name)`, or simply `load_model(name)`, which prepares on demand).
"""

from models.config import ModelConfig
from models.decoder import (
    KVCache,
    causal_mask,
    check_capacity,
    forward,
    init_cache,
    init_params,
    make_forward,
    prefill,
)
from models.errors import (
    HashMismatchError,
    IncompatibleModelsError,
    ModelFileError,
    PromptTooLongError,
    UnknownArchitectureError,
)
from models.loading import LoadedModel, check_compatible, load_model, load_model_info
from models.presets import PRESETS

__all__ = [
    "PRESETS",
    "HashMismatchError",
    "IncompatibleModelsError",
    "KVCache",
    "LoadedModel",
    "ModelConfig",
    "ModelFileError",
    "PromptTooLongError",
    "UnknownArchitectureError",
    "causal_mask",
    "check_capacity",
    "check_compatible",
    "forward",
    "init_cache",
    "init_params",
    "load_model",
    "load_model_info",
    "make_forward",
    "prefill",
]
