"""Static model hyperparameters: a frozen dataclass built from GGUF metadata or HF config.json."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from models.errors import UnknownArchitectureError

ARCHITECTURES = ("llama", "qwen2")
ROPE_LAYOUTS = ("interleaved", "rotate_half")
DTYPES = ("float32", "bfloat16")

# GGUF token types (llama.cpp `llama_token_type`): 5 marks unused/padding ids.
_GGUF_TOKEN_UNUSED = 5


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a llama/qwen2 decoder; hashable, so usable as a jit static argument.

    Attributes:
      arch: 'llama' or 'qwen2'.
      vocab_size: rows of the embedding / output head (V).
      valid_vocab_size: ids >= this are padding and get logit -1e30 (probability 0).
      hidden: model width (D).
      layers: number of transformer blocks.
      heads: query heads (H).
      kv_heads: key/value heads (grouped-query attention, H % kv_heads == 0).
      head_dim: per-head width.
      mlp_hidden: SwiGLU inner width.
      rms_eps: RMSNorm epsilon.
      rope_theta: RoPE base frequency.
      rope_layout: 'interleaved' (GPT-J pairs 2i/2i+1; llama-arch GGUF, whose converter
        permutes Q/K rows) or 'rotate_half' (pairs i/i+head_dim/2; HF and qwen2 GGUF).
      qkv_bias: whether q/k/v projections have biases (qwen2).
      tied_embeddings: output head is the transposed token embedding.
      dtype: compute and parameter dtype, 'float32' (default) or 'bfloat16'.
      scan_layers: run the blocks under one scan, with their params stacked over layers
        (`layers/...` [L, ...]), instead of an unrolled loop over per-layer params
        (`layers_3/...`). XLA then compiles one block body: 2-5x less compile time on CPU,
        but each call copies every layer's weights out of the stacked arrays (XLA:CPU reads
        no dot operand through a dynamic slice), which costs 25-90% per call on CPU
        (qwen2.5-coder-0.5b); hence off by default. See models/README.md.
      bos_id, eos_id, pad_id: special token ids (-1 when unknown).
      max_positions: trained context length (informational).
      name: human-readable name.
      head_vocab: 0 scores every id; N > 0 restricts the output head to N ids held in the
        params (see `models.draft_vocab`): every other id gets logit -1e30. For drafts
        only: any draft law keeps speculative decoding lossless, and the head of a small
        model with a large vocabulary is a large share of its weights.
    """

    arch: str
    vocab_size: int
    valid_vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_hidden: int
    rms_eps: float
    rope_theta: float
    rope_layout: str
    qkv_bias: bool
    tied_embeddings: bool
    dtype: str = "float32"
    scan_layers: bool = False
    bos_id: int = -1
    eos_id: int = -1
    pad_id: int = -1
    max_positions: int = 0
    name: str = ""
    head_vocab: int = 0

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise UnknownArchitectureError(
                f"unknown architecture {self.arch!r}; supported: {', '.join(ARCHITECTURES)}"
            )
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"rope_layout {self.rope_layout!r} not in {ROPE_LAYOUTS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not in {DTYPES}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} is not a multiple of kv_heads={self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if not 0 <= self.head_vocab <= self.valid_vocab_size:
            raise ValueError(
                f"head_vocab={self.head_vocab} not in [0, valid_vocab_size={self.valid_vocab_size}]"
            )
        if not 0 < self.valid_vocab_size <= self.vocab_size:
            raise ValueError(
                f"valid_vocab_size={self.valid_vocab_size} not in (0, {self.vocab_size}]"
            )

    def replace(self, **changes) -> ModelConfig:
        """Returns a copy with `changes` applied (e.g. `dtype='bfloat16'`)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The model's identity: `scan_layers` (how the blocks run, results identical) is
        left out, so converted caches and experiment workdirs do not depend on it."""
        fields = dataclasses.asdict(self)
        del fields["scan_layers"]
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls(**json.loads(text))


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
      UnknownArchitectureError: the architecture is not llama or qwen2.
    """
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r} in GGUF metadata; supported: {', '.join(ARCHITECTURES)}"
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
        arch=arch,
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
    )


def from_hf_config(cfg: Mapping[str, Any], valid_vocab_size: int | None = None) -> ModelConfig:
    """Builds a config from a Hugging Face `config.json` dict (llama or qwen2 models).

    Args:
      cfg: the parsed config.json.
      valid_vocab_size: number of ids the tokenizer can produce, if known.

    Returns:
      The ModelConfig (rotate-half RoPE, as HF checkpoints store unpermuted Q/K).

    Raises:
      UnknownArchitectureError: `model_type` is not llama or qwen2.
      ValueError: unsupported RoPE scaling.
    """
    arch = cfg.get("model_type")
    if arch not in ARCHITECTURES:
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r} (config.json model_type, architectures="
            f"{cfg.get('architectures')}); supported: {', '.join(ARCHITECTURES)}"
        )
    rope = cfg.get("rope_scaling") or {}
    rope_params = cfg.get("rope_parameters") or {}
    kind = rope.get("rope_type", rope.get("type")) or rope_params.get("rope_type", "default")
    if kind not in ("default", None):
        raise ValueError(f"RoPE scaling {kind!r} is not supported")
    theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    vocab = int(cfg["vocab_size"])
    eos = cfg.get("eos_token_id", -1)
    eos = eos[0] if isinstance(eos, list) else eos
    bos = cfg.get("bos_token_id", -1)
    pad = cfg.get("pad_token_id", eos)
    return ModelConfig(
        arch=arch,
        vocab_size=vocab,
        valid_vocab_size=min(valid_vocab_size or vocab, vocab),
        hidden=hidden,
        layers=int(cfg["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        mlp_hidden=int(cfg["intermediate_size"]),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        rope_layout="rotate_half",
        qkv_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_id=-1 if bos is None else int(bos),
        eos_id=-1 if eos is None else int(eos),
        pad_id=-1 if pad is None else int(pad),
        max_positions=int(cfg.get("max_position_embeddings", 0)),
        name=str(cfg.get("_name_or_path", "")),
    )
