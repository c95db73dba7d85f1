"""Models: a Flax decoder (llama and its variants) with a KV cache, its loaders and kernels.

- `models.arch`: the networks (`ModelConfig`, the decoder and its blocks, weight layouts,
  a restricted draft head, tensor-parallel rules);
- `models.loading`: files to models (presets, GGUF, HF directories, tokenizers, exported
  drafts);
- `models.kernels`: the native CPU kernels (tiled / int8 products, the top-p threshold);
- `models.drafts`: small drafts (pruned, from scratch) and the ids a restricted head keeps;
- `models.adapter`: a loaded model behind `rsd_jax.Model`; `models.toy` / `models.testing`:
  n-gram models with known conditionals and tiny decoders for tests.

The public entry points are re-exported here. Presets are prepared with
`python -m models.prepare NAME ...` (in Python: `models.loading.presets.prepare(name)`, or
simply `load_model(name)`, which prepares on demand).
"""

import importlib

from models.moved import install as _install_moved

# The public names, imported on first use (PEP 562): importing `models` (or a stdlib-only
# module under `experiments`, such as `experiments.common.runtime` before the install) does
# not import JAX or Flax.
_EXPORTS = {
    "ModelConfig": "models.arch.config",
    **dict.fromkeys(
        (
            "KVCache",
            "causal_mask",
            "check_capacity",
            "forward",
            "init_cache",
            "init_params",
            "make_forward",
            "prefill",
        ),
        "models.arch.decoder",
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "HashMismatchError",
            "IncompatibleModelsError",
            "ModelFileError",
            "PromptTooLongError",
            "UnknownArchitectureError",
        ),
        "models.errors",
    ),  # fmt: skip
    "LoadedModel": "models.loaded",
    **dict.fromkeys(("check_compatible", "load_model", "load_model_info"), "models.loading"),
    "PRESETS": "models.loading.presets",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


# Modules of the flat layout, before arch/, loading/ and kernels/ (2026-12).
_install_moved(
    {
        "models.config": "models.arch.config (ModelConfig; readers: models.loading.families)",
        "models.decoder": "models.arch.decoder",
        "models.sharding": "models.arch.sharding",
        "models.quantize": "models.arch.quantize",
        "models.draft_vocab": "models.arch.head (restrict_head) and models.drafts (ids)",
        "models.student": "models.drafts (prune, scratch), models.loading.draft_dir (export)",
        "models.gguf_loader": "models.loading.gguf_loader",
        "models.hf_loader": "models.loading.hf_loader",
        "models.tokenizer": "models.loading.tokenizer",
        "models.presets": "models.loading.presets",
        "models.registry": "models.loading.registry",
        "models.native": "models.kernels.native",
        "models.tiled_matmul": "models.kernels.tiled_matmul",
        "models.nucleus": "models.kernels.nucleus",
    }
)

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
