"""Reading a `ModelConfig` from a GGUF file's metadata or an HF config.json, per family."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from models.arch.config import ARCHITECTURES, ROPE_TYPES, ModelConfig
from models.errors import UnknownArchitectureError

# GGUF `general.architecture` -> family; the GGUF loader reads llama's tensor names (plus
# Gemma 3's QK-norm and post-norm tensors).
GGUF_ARCHITECTURES = ("llama", "qwen2", "gemma3")
_GGUF_FAMILY = {"gemma3": "gemma3_text"}
# llama.cpp's Gemma 3 (src/llama-model.cpp; the GGUF has no key for these): every 6th layer
# is global, the others slide; sliding layers use RoPE base 10000.
_GEMMA3_PATTERN, _GEMMA3_LOCAL_THETA = 6, 10000.0

# GGUF token types (llama.cpp `llama_token_type`): 5 marks unused/padding ids.
_GGUF_TOKEN_UNUSED = 5


def from_gguf_metadata(
    meta: Mapping[str, Any], tensor_names: set[str], embed_rows: int
) -> ModelConfig:
    """Builds a config from GGUF key/values (already decoded to Python values).

    Args:
      meta: GGUF metadata, e.g. {'general.architecture': 'llama', 'llama.block_count': 30}.
      tensor_names: names of the tensors in the file (to detect biases and a separate head).
      embed_rows: number of rows of `token_embd.weight` (the vocabulary size V).

    Returns:
      The ModelConfig.

    Raises:
      UnknownArchitectureError: the architecture is not llama, qwen2 or gemma3.
    """
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r} in GGUF metadata; supported: "
            f"{', '.join(GGUF_ARCHITECTURES)} (the other families load from HF directories)"
        )

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    types = list(meta.get("tokenizer.ggml.token_type") or [])
    valid = len(tokens) if tokens else embed_rows
    while valid > 0 and len(types) >= valid and types[valid - 1] == _GGUF_TOKEN_UNUSED:
        valid -= 1
    if arch == "qwen2":
        # Qwen pads its vocabulary with unused ids ('[PAD151665]', ...) that GGUF marks as
        # ordinary tokens in some conversions; never let a sampler pick them.
        while valid > 0 and str(tokens[valid - 1]).startswith("[PAD"):
            valid -= 1
    eos = int(meta.get("tokenizer.ggml.eos_token_id", -1))
    return ModelConfig(
        arch=_GGUF_FAMILY.get(arch, arch),
        vocab_size=embed_rows,
        valid_vocab_size=min(valid, embed_rows),
        hidden=hidden,
        layers=int(get("block_count")),
        heads=heads,
        kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        mlp_hidden=int(get("feed_forward_length")),
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        # llama.cpp's converter permutes llama Q/K rows into the interleaved layout.
        rope_layout="interleaved" if arch == "llama" else "rotate_half",
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        tied_embeddings="output.weight" not in tensor_names,
        bos_id=int(meta.get("tokenizer.ggml.bos_token_id", -1)),
        eos_id=eos,
        pad_id=int(meta.get("tokenizer.ggml.padding_token_id", eos)),
        max_positions=int(meta.get(f"{arch}.context_length", 0)),
        name=str(meta.get("general.name", "")),
        **(_gguf_gemma3(meta, int(get("block_count")), head_dim) if arch == "gemma3" else {}),
    )


def _gguf_gemma3(meta: Mapping[str, Any], layers: int, head_dim: int) -> dict[str, Any]:
    """The gemma3_text family fields of a `gemma3` GGUF (what `_hf_family` reads from a
    config.json), with llama.cpp's fixed conventions where the file has no key."""
    kind = meta.get("gemma3.rope.scaling.type", "none")
    if kind not in ("none", "linear"):
        raise ValueError(f"gemma3 GGUF RoPE scaling {kind!r} is not supported (linear)")
    scaling = ()
    if kind == "linear":
        scaling = (("factor", float(meta["gemma3.rope.scaling.factor"])), ("rope_type", "linear"))
    pattern = int(meta.get("gemma3.attention.sliding_window_pattern", _GEMMA3_PATTERN))
    types = tuple("full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                  for i in range(layers))  # fmt: skip
    return dict(
        rope_scaling=scaling,
        rope_local_theta=_GEMMA3_LOCAL_THETA,
        sliding_window=int(meta["gemma3.attention.sliding_window"]),
        layer_types=types,
        # llama.cpp stores Gemma's norm weights as 1 + w; the loader subtracts the 1 again.
        norm="rms_plus_one",
        post_norms=True,
        qk_norm=True,
        mlp="geglu_tanh",
        embed_scale=True,
        # llama.cpp scales queries by key_length ** -0.5 (query_pre_attn_scalar = head_dim
        # in every Gemma 3 but 27B, whose GGUF this is not checked against).
        attn_scale=float(head_dim) ** -0.5,
    )


def _hf_rope(cfg: Mapping[str, Any]) -> tuple[float, tuple, float]:
    """(rope_theta, rope_scaling pairs of the full layers, rope_local_theta) of a config.json.

    Reads transformers 4's `rope_theta` + `rope_scaling` and transformers 5's
    `rope_parameters` (flat, or keyed by layer type as Gemma 3 writes it).
    """
    params = dict(cfg.get("rope_parameters") or {})
    local_theta = float(cfg.get("rope_local_base_freq") or 0.0)
    if "full_attention" in params or "sliding_attention" in params:
        local = dict(params.get("sliding_attention") or {})
        if local.get("rope_type", "default") != "default":
            raise ValueError(
                f"RoPE scaling {local.get('rope_type')!r} of sliding layers is not supported"
            )
        local_theta = float(local.get("rope_theta") or local_theta)
        params = dict(params.get("full_attention") or {})
    scaling = dict(cfg.get("rope_scaling") or {}) or params
    theta = cfg.get("rope_theta") or params.get("rope_theta") or 10000.0
    kind = scaling.get("rope_type", scaling.get("type")) or "default"
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"RoPE scaling {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    if kind == "default":
        return float(theta), (), local_theta
    out: dict[str, Any] = {"rope_type": kind}
    if kind in ("llama3", "yarn"):  # transformers falls back to max_position_embeddings
        original = scaling.get("original_max_position_embeddings")
        out["original_max_position_embeddings"] = int(original or cfg["max_position_embeddings"])
    if kind == "llama3":
        out |= {k: float(scaling[k]) for k in ("low_freq_factor", "high_freq_factor")}
    if kind == "yarn":
        out |= _yarn(scaling, cfg, out["original_max_position_embeddings"])
    else:
        out["factor"] = float(scaling["factor"])
    return float(theta), tuple(out.items()), local_theta


def _yarn(scaling: Mapping[str, Any], cfg: Mapping[str, Any], original: int) -> dict[str, Any]:
    """YaRN's parameters with transformers' defaults resolved, attention_factor included."""
    if float(scaling.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("RoPE scaling 'yarn' with partial_rotary_factor is not supported")
    factor = scaling.get("factor") or cfg["max_position_embeddings"] / original
    factor = float(factor)

    def mscale(scale):  # YaRN's attention temperature
        return 1.0 if factor <= 1 else 0.1 * scale * math.log(factor) + 1.0

    attention = scaling.get("attention_factor")
    if attention is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = mscale(m) / mscale(m_all) if m and m_all else mscale(1.0)
    return dict(
        factor=factor,
        attention_factor=float(attention),
        beta_fast=float(scaling.get("beta_fast") or 32),
        beta_slow=float(scaling.get("beta_slow") or 1),
        truncate=bool(scaling.get("truncate", True)),
    )


def _hf_family(arch: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The family fields (see ModelConfig) of a config.json, beyond llama's."""
    out: dict[str, Any] = {}
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if types and "sliding_attention" in types:  # transformers 5 lists them (qwen2, mistral)
        out |= dict(layer_types=tuple(types), sliding_window=int(window))
    elif arch == "mistral" and window:
        out["sliding_window"] = int(window)
    elif arch == "qwen2" and cfg.get("use_sliding_window") and not types:
        raise ValueError("qwen2 use_sliding_window without layer_types is not supported")
    if arch in ("gemma2", "gemma3_text"):
        if not types:  # older configs: every `pattern`-th layer is global
            pattern = int(cfg.get("sliding_window_pattern") or 2)
            n = int(cfg["num_hidden_layers"])
            types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                     for i in range(n)]  # fmt: skip
        if "sliding_attention" in types:
            out["sliding_window"] = int(window)
        out |= dict(layer_types=tuple(types), norm="rms_plus_one", post_norms=True)
        out |= dict(mlp="geglu_tanh", embed_scale=True)
        scalar = cfg.get("query_pre_attn_scalar")
        out["attn_scale"] = float(scalar) ** -0.5 if scalar else 0.0
        out["attn_softcap"] = float(cfg.get("attn_logit_softcapping") or 0.0)
        out["final_softcap"] = float(cfg.get("final_logit_softcapping") or 0.0)
        out["qk_norm"] = arch == "gemma3_text"
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ValueError(f"{arch} activation {act!r} is not supported (gelu_pytorch_tanh)")
    if arch == "opt":
        if cfg.get("activation_function", "relu") != "relu":
            raise ValueError(f"OPT activation {cfg['activation_function']!r} unsupported (relu)")
        if not cfg.get("enable_bias", True) or not cfg.get("layer_norm_elementwise_affine", True):
            raise ValueError("OPT without biases or without norm weights is not supported")
        hidden = int(cfg["hidden_size"])
        proj = int(cfg.get("word_embed_proj_dim") or hidden)
        out |= dict(norm="layer", mlp="relu", dense_bias=True)
        out |= dict(learned_positions=int(cfg["max_position_embeddings"]) + 2)
        out |= dict(pre_norm=bool(cfg.get("do_layer_norm_before", True)))
        out["embed_dim"] = 0 if proj == hidden else proj
        if cfg.get("_remove_final_layer_norm"):
            raise ValueError("OPT with _remove_final_layer_norm is not supported")
    return out


def from_hf_config(cfg: Mapping[str, Any], valid_vocab_size: int | None = None) -> ModelConfig:
    """Builds a config from a Hugging Face `config.json` dict.

    Args:
      cfg: the parsed config.json (model_type llama, qwen2, mistral, gemma2, gemma3_text or
        opt).
      valid_vocab_size: number of ids the tokenizer can produce, if known.

    Returns:
      The ModelConfig (rotate-half RoPE, as HF checkpoints store unpermuted Q/K).

    Raises:
      UnknownArchitectureError: another `model_type`.
      ValueError: an unsupported variant (RoPE scaling type, activation, ...), named.
    """
    arch = cfg.get("model_type")
    if arch not in ARCHITECTURES:
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r} (config.json model_type, architectures="
            f"{cfg.get('architectures')}); supported: {', '.join(ARCHITECTURES)}"
        )
    theta, scaling, local_theta = (10000.0, (), 0.0) if arch == "opt" else _hf_rope(cfg)
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    vocab = int(cfg["vocab_size"])
    eos = cfg.get("eos_token_id", -1)
    eos = eos[0] if isinstance(eos, list) else eos
    bos = cfg.get("bos_token_id", -1)
    pad = cfg.get("pad_token_id", eos)
    mlp_hidden = cfg.get("ffn_dim") if arch == "opt" else cfg["intermediate_size"]
    tied_default = arch in ("gemma2", "gemma3_text", "opt")
    return ModelConfig(
        arch=arch,
        vocab_size=vocab,
        valid_vocab_size=min(valid_vocab_size or vocab, vocab),
        hidden=hidden,
        layers=int(cfg["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        mlp_hidden=int(mlp_hidden),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-5 if arch == "opt" else 1e-6)),
        rope_theta=theta,
        rope_layout="rotate_half",
        qkv_bias=bool(cfg.get("attention_bias", arch in ("qwen2", "opt"))),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", tied_default)),
        bos_id=-1 if bos is None else int(bos),
        eos_id=-1 if eos is None else int(eos),
        pad_id=-1 if pad is None else int(pad),
        max_positions=int(cfg.get("max_position_embeddings", 0)),
        name=str(cfg.get("_name_or_path", "")),
        rope_scaling=scaling,
        rope_local_theta=local_theta,
        **_hf_family(arch, cfg),
    )
