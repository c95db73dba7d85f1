"""Load (and save, for tests and export) Hugging Face style safetensors directories.

A directory holds `config.json` and `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Tensor names follow transformers' layout of each family
(`model.layers.N.self_attn.q_proj.weight`, ...; OPT's `model.decoder.layers.N...`), weights
(out, in); RoPE is rotate-half.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from models.arch import config as config_lib
from models.errors import ModelFileError
from models.loading import families
from models.loading.gguf_loader import (
    build_params,
    cast_params,
    expected_param_names,
    flatten,
    per_layer_tensors,
    unflatten,
)

_LAYER = {
    "input_layernorm.weight": "attn_norm/scale",
    "self_attn.q_proj.weight": "attn/q/kernel",
    "self_attn.k_proj.weight": "attn/k/kernel",
    "self_attn.v_proj.weight": "attn/v/kernel",
    "self_attn.q_proj.bias": "attn/q/bias",
    "self_attn.k_proj.bias": "attn/k/bias",
    "self_attn.v_proj.bias": "attn/v/bias",
    "self_attn.o_proj.weight": "attn/o/kernel",
    "post_attention_layernorm.weight": "mlp_norm/scale",
    "mlp.gate_proj.weight": "mlp/gate/kernel",
    "mlp.up_proj.weight": "mlp/up/kernel",
    "mlp.down_proj.weight": "mlp/down/kernel",
}
_TOP = {
    "model.embed_tokens.weight": "embed/embedding",
    "model.norm.weight": "final_norm/scale",
    "lm_head.weight": "lm_head/kernel",
}
# Gemma 2/3 differ in norms only: `post_attention_layernorm` is the post-norm of the
# attention output (llama's pre-MLP norm is `pre_feedforward_layernorm` there).
_GEMMA_LAYER = _LAYER | {
    "post_attention_layernorm.weight": "attn_post_norm/scale",
    "pre_feedforward_layernorm.weight": "mlp_norm/scale",
    "post_feedforward_layernorm.weight": "mlp_post_norm/scale",
    "self_attn.q_norm.weight": "attn/q_norm/scale",
    "self_attn.k_norm.weight": "attn/k_norm/scale",
}
_OPT_DENSE = {"self_attn.q_proj": "attn/q", "self_attn.k_proj": "attn/k",
              "self_attn.v_proj": "attn/v", "self_attn.out_proj": "attn/o",
              "fc1": "mlp/up", "fc2": "mlp/down"}  # fmt: skip
_OPT_NORMS = {"self_attn_layer_norm": "attn_norm", "final_layer_norm": "mlp_norm"}
_OPT_LAYER = (
    {f"{hf}.weight": f"{ours}/kernel" for hf, ours in _OPT_DENSE.items()}
    | {f"{hf}.weight": f"{ours}/scale" for hf, ours in _OPT_NORMS.items()}
    | {f"{hf}.bias": f"{ours}/bias" for hf, ours in (_OPT_DENSE | _OPT_NORMS).items()}
)
_OPT_TOP = {
    "model.decoder.embed_tokens.weight": "embed/embedding",
    "model.decoder.embed_positions.weight": "pos_embed/embedding",
    "model.decoder.final_layer_norm.weight": "final_norm/scale",
    "model.decoder.final_layer_norm.bias": "final_norm/bias",
    "model.decoder.project_in.weight": "project_in/kernel",
    "model.decoder.project_out.weight": "project_out/kernel",
    "lm_head.weight": "lm_head/kernel",
}


def _names(arch: str) -> tuple[dict[str, str], str, dict[str, str]]:
    """(top-level names, per-layer prefix, per-layer names) of `arch`'s checkpoints."""
    if arch == "opt":
        return _OPT_TOP, "model.decoder.layers.", _OPT_LAYER
    if arch in ("gemma2", "gemma3_text"):
        return _TOP, "model.layers.", _GEMMA_LAYER
    return _TOP, "model.layers.", _LAYER


def hf_to_param_name(name: str, arch: str = "llama") -> str | None:
    """'model.layers.3.mlp.up_proj.weight' -> 'layers_3/mlp/up/kernel' (None if unused)."""
    top, prefix, per_layer = _names(arch)
    if name in top:
        return top[name]
    if name.startswith(prefix):
        layer, rest = name[len(prefix) :].split(".", 1)
        if rest in per_layer:
            return f"layers_{int(layer)}/{per_layer[rest]}"
    return None


def _shard_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [directory / f for f in sorted(set(weight_map.values()))]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelFileError(f"no *.safetensors files in {directory}")
    for f in files:
        if not f.is_file():
            raise ModelFileError(f"safetensors shard missing: {f}")
    return files


def valid_vocab_size(directory: Path) -> int | None:
    """Max token id + 1 in the directory's tokenizer.json (None if there is none)."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    ids = list(state.get("model", {}).get("vocab", {}).values())
    ids += [t["id"] for t in state.get("added_tokens", [])]
    return max(ids) + 1 if ids else None


def load_hf_dir(
    directory: str | os.PathLike, dtype: str | None = None, scan_layers: bool = False
) -> tuple[config_lib.ModelConfig, dict]:
    """Loads a safetensors checkpoint directory as (config, params).

    Args:
      directory: folder with config.json and *.safetensors (sharded or not).
      dtype: 'float32' (default) or 'bfloat16'.
      scan_layers: `ModelConfig.scan_layers` (params stacked over layers) or not.

    Raises:
      ModelFileError: missing/unreadable files or missing tensors.
      UnknownArchitectureError: config.json names another architecture.
    """
    from safetensors import safe_open

    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not directory.is_dir() or not cfg_path.is_file():
        raise ModelFileError(f"{directory} is not a model directory (no config.json)")
    try:
        raw = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ModelFileError(f"{cfg_path} is not valid JSON: {e}") from e
    config = families.from_hf_config(raw, valid_vocab_size(directory))
    flat = {}
    for shard in _shard_files(directory):
        try:
            with safe_open(str(shard), "np") as f:
                for name in f.keys():
                    target = hf_to_param_name(name, config.arch)
                    if target is None:
                        continue
                    w = np.asarray(f.get_tensor(name), np.float32)
                    flat[target] = np.ascontiguousarray(w.T) if target.endswith("kernel") else w
        except ModelFileError:
            raise
        except Exception as e:  # SafetensorError, OSError on truncated/corrupt shards
            raise ModelFileError(f"cannot read {shard} (truncated or corrupt?): {e}") from e
    if config.tied_embeddings:
        flat.pop("lm_head/kernel", None)
    missing = sorted(expected_param_names(config) - set(flat))
    if missing:
        raise ModelFileError(
            f"{directory} lacks tensors for {missing[:5]} ({len(missing)} missing)"
        )
    config = config.replace(dtype=dtype or config.dtype, scan_layers=scan_layers)
    return config, build_params(list(flat), flat.pop, config.dtype, scan_layers)


_HF_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "opt": "OPTForCausalLM",
}


def hf_config_dict(config: config_lib.ModelConfig) -> dict:
    """The config.json transformers expects for `config` (rotate-half checkpoints only)."""
    out = {
        "architectures": [_HF_CLASSES[config.arch]],
        "model_type": config.arch,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.mlp_hidden,
        "rms_norm_eps": config.rms_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tied_embeddings,
        "max_position_embeddings": config.max_positions or 2048,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "pad_token_id": config.pad_id,
    }
    if config.arch in ("llama", "gemma2", "gemma3_text"):
        out["attention_bias"] = config.qkv_bias
    elif config.arch == "mistral" and config.qkv_bias:
        raise ValueError("mistral checkpoints have no q/k/v biases")
    out |= _hf_family_dict(config)
    if config.arch == "gemma3_text":  # its RoPE lives in rope_parameters only
        del out["rope_theta"]
    return out


def _hf_family_dict(config: config_lib.ModelConfig) -> dict:
    """The config.json entries of the family fields (inverse of config._hf_family)."""
    out: dict = {}
    if config.rope_scaling:
        out["rope_scaling"] = dict(config.rope_scaling)
    if config.sliding_window:
        out["sliding_window"] = config.sliding_window
    if config.layer_types:
        out["layer_types"] = list(config.layer_types)
    if config.arch in ("gemma2", "gemma3_text"):
        out["hidden_activation"] = "gelu_pytorch_tanh"
        scalar = round((config.attn_scale or config.head_dim**-0.5) ** -2, 6)
        out["query_pre_attn_scalar"] = int(scalar) if scalar == int(scalar) else scalar
        out["attn_logit_softcapping"] = config.attn_softcap or None
        out["final_logit_softcapping"] = config.final_softcap or None
    if config.arch == "gemma3_text":  # transformers 5: RoPE per layer type
        full = {"rope_type": "default"} | dict(config.rope_scaling)
        local = config.rope_local_theta or config.rope_theta
        out["rope_parameters"] = {
            "full_attention": full | {"rope_theta": config.rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        }
        out.pop("rope_scaling", None)
    if config.arch == "opt":
        out |= dict(
            ffn_dim=config.mlp_hidden,
            do_layer_norm_before=config.pre_norm,
            word_embed_proj_dim=config.embed_dim or config.hidden,
            max_position_embeddings=config.learned_positions - 2,
            activation_function="relu",
            enable_bias=True,
            layer_norm_elementwise_affine=True,
        )
    return out


def save_hf_dir(
    config: config_lib.ModelConfig, params: dict, directory: str | os.PathLike,
    max_shard_bytes: int | None = None, dtype: str = "float32",
) -> None:  # fmt: skip
    """Writes params as an HF-layout safetensors directory (sharded if asked).

    Args:
      config: the model config (must be rotate-half).
      params: the params pytree.
      directory: output folder (config.json, *.safetensors, index if sharded).
      max_shard_bytes: shard when given.
      dtype: tensor dtype on disk, 'float32' or 'bfloat16'.

    Raises:
      ValueError: `config.rope_layout` is 'interleaved' (HF checkpoints are rotate-half).
    """
    from safetensors.numpy import save_file

    if config.rope_layout != "rotate_half":
        raise ValueError("HF checkpoints use rotate-half RoPE; un-permute Q/K first")
    top, prefix, per_layer = _names(config.arch)
    inverse = {v: k for k, v in top.items()}
    inverse_layer = {v: k for k, v in per_layer.items()}
    hf_config = hf_config_dict(config) | {"torch_dtype": dtype}
    tensors = {}
    import ml_dtypes

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    for name, w in per_layer_tensors(params).items():
        w = np.asarray(np.asarray(w, np.float32), np_dtype)
        if name in inverse:
            hf = inverse[name]
        else:
            layer, rest = name.split("/", 1)
            hf = f"{prefix}{layer.split('_')[1]}.{inverse_layer[rest]}"
        tensors[hf] = np.ascontiguousarray(w.T) if name.endswith("kernel") else w
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    if max_shard_bytes is None:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        if current and size + tensors[name].nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += tensors[name].nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}}
    index["weight_map"] = weight_map
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def to_rotate_half(config: config_lib.ModelConfig, params: dict):
    """Un-permutes the Q/K columns of an interleaved-layout model (llama-arch GGUF).

    llama.cpp's converter reorders each head's rows from (2, E/2) to (E/2, 2); undoing it
    gives the HF order, which uses rotate-half RoPE. Returns (config, params) unchanged if
    the model is already rotate-half.
    """
    if config.rope_layout == "rotate_half":
        return config, params

    def unpermute(w, heads):  # kernel [D, heads*E] or bias [heads*E]
        w = np.asarray(w)
        e = w.shape[-1] // heads
        w = w.reshape(w.shape[:-1] + (heads, e // 2, 2))
        return np.swapaxes(w, -1, -2).reshape(w.shape[:-3] + (heads * e,))

    flat = flatten(params)
    for name in flat:
        parts = name.split("/")
        if len(parts) == 4 and parts[1] == "attn" and parts[2] in ("q", "k"):
            heads = config.heads if parts[2] == "q" else config.kv_heads
            flat[name] = unpermute(flat[name], heads)
    config = config.replace(rope_layout="rotate_half")
    return config, cast_params(unflatten(flat), config.dtype)
