"""Static model hyperparameters: a frozen dataclass built from GGUF metadata or HF config.json."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from models.errors import UnknownArchitectureError

ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma2", "gemma3_text", "opt")
# GGUF `general.architecture` -> family; the GGUF loader reads llama's tensor names (plus
# Gemma 3's QK-norm and post-norm tensors).
GGUF_ARCHITECTURES = ("llama", "qwen2", "gemma3")
_GGUF_FAMILY = {"gemma3": "gemma3_text"}
# llama.cpp's Gemma 3 (src/llama-model.cpp; the GGUF has no key for these): every 6th layer
# is global, the others slide; sliding layers use RoPE base 10000.
_GEMMA3_PATTERN, _GEMMA3_LOCAL_THETA = 6, 10000.0
ROPE_LAYOUTS = ("interleaved", "rotate_half")
DTYPES = ("float32", "bfloat16")
WEIGHTS = ("float", "tiled", "int8")  # how matrices are stored (ModelConfig.weights)
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
NORMS = ("rms", "rms_plus_one", "layer")
MLPS = ("swiglu", "geglu_tanh", "relu")
LAYER_TYPES = ("full_attention", "sliding_attention")

# GGUF token types (llama.cpp `llama_token_type`): 5 marks unused/padding ids.
_GGUF_TOKEN_UNUSED = 5


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a decoder; hashable, so usable as a jit static argument.

    The fields before `dtype` describe a llama block; the families (mistral, gemma2,
    gemma3_text, opt) are llama plus the differences declared by the fields after
    `head_vocab`, whose defaults are llama's.

    Attributes:
      arch: the family, one of ARCHITECTURES (HF `model_type` names).
      vocab_size: rows of the embedding / output head (V).
      valid_vocab_size: ids >= this are padding and get logit -1e30 (probability 0).
      hidden: model width (D).
      layers: number of transformer blocks.
      heads: query heads (H).
      kv_heads: key/value heads (grouped-query attention, H % kv_heads == 0).
      head_dim: per-head width.
      mlp_hidden: SwiGLU inner width.
      rms_eps: epsilon of every norm (RMSNorm or LayerNorm).
      rope_theta: RoPE base frequency (of the full-attention layers where they differ).
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
        (qwen2.5-coder-0.5b); hence off by default. See docs/models.md.
      bos_id, eos_id, pad_id: special token ids (-1 when unknown).
      max_positions: trained context length (informational).
      name: human-readable name.
      head_vocab: 0 scores every id; N > 0 restricts the output head to N ids held in the
        params (see `models.draft_vocab`): every other id gets logit -1e30. For drafts
        only: any draft law keeps speculative decoding lossless, and the head of a small
        model with a large vocabulary is a large share of its weights.
      rope_scaling: sorted (key, value) pairs of HF's RoPE scaling of the full-attention
        layers, e.g. (('factor', 8.0), ('high_freq_factor', 4.0), ('low_freq_factor', 1.0),
        ('original_max_position_embeddings', 8192), ('rope_type', 'llama3')); () for none.
        Types: ROPE_TYPES.
      rope_local_theta: RoPE base of the sliding-window layers (Gemma 3), unscaled; 0 uses
        rope_theta and rope_scaling.
      sliding_window: 0, or the attention window W in token positions: a query at position
        p sees a key at position q only if p - q < W (transformers' convention).
      layer_types: per layer, 'full_attention' or 'sliding_attention'; () means every
        layer slides when sliding_window > 0 (Mistral), none otherwise.
      norm: 'rms', 'rms_plus_one' (RMSNorm scaled by 1 + weight, Gemma) or 'layer'
        (LayerNorm with bias, OPT).
      post_norms: extra norms on the attention and MLP outputs before each residual add
        (Gemma 2/3: `attn_post_norm`, `mlp_post_norm`).
      pre_norm: False puts the norms after each residual add and drops the final norm (OPT
        with do_layer_norm_before=False).
      qk_norm: per-head RMSNorm of queries and keys before RoPE (Gemma 3).
      mlp: 'swiglu' (silu(gate)*up), 'geglu_tanh' (tanh-approximate gelu(gate)*up) or
        'relu' (up, relu, down; no gate).
      dense_bias: the attention output and MLP projections have biases (OPT).
      embed_scale: multiply the token embeddings by sqrt(hidden), rounded to the model
        dtype as transformers does (Gemma).
      attn_scale: query scale; 0 means head_dim ** -0.5 (Gemma: query_pre_attn_scalar**-0.5).
      attn_softcap: 0, or c: attention scores become c * tanh(scores / c) (Gemma 2).
      final_softcap: 0, or c: the same on the output logits (Gemma 2).
      learned_positions: 0 for RoPE, or the rows of a learned position table (OPT), which
        position p reads at row p + 2 (OPT's offset); no RoPE then.
      embed_dim: 0, or the width of the token embeddings when it differs from hidden
        (OPT's word_embed_proj_dim, with `project_in`/`project_out` around the blocks).
      weights: how the projection matrices, the head and the embedding are stored (see
        `models.quantize`): 'float' (in `dtype`, XLA's products), 'tiled' (float32 in 64-column
        tiles, computed by `models.tiled_matmul`: the same model to float rounding, and
        scoring a tree of a few tokens costs little more than one token on a CPU) or 'int8'
        (tiles of int8 with one float32 scale per output channel: a coarser model reading a
        quarter of the bytes; for drafts, whose law may be anything without losing
        exactness).
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
    rope_scaling: tuple = ()
    rope_local_theta: float = 0.0
    sliding_window: int = 0
    layer_types: tuple = ()
    norm: str = "rms"
    post_norms: bool = False
    pre_norm: bool = True
    qk_norm: bool = False
    mlp: str = "swiglu"
    dense_bias: bool = False
    embed_scale: bool = False
    attn_scale: float = 0.0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    learned_positions: int = 0
    embed_dim: int = 0
    weights: str = "float"

    def __post_init__(self):
        # JSON gives lists; keep the config hashable.
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(
            self, "rope_scaling", tuple(sorted((str(k), v) for k, v in self.rope_scaling))
        )
        self._check_families()
        if self.arch not in ARCHITECTURES:
            raise UnknownArchitectureError(
                f"unknown architecture {self.arch!r}; supported: {', '.join(ARCHITECTURES)}"
            )
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"rope_layout {self.rope_layout!r} not in {ROPE_LAYOUTS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not in {DTYPES}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights {self.weights!r} not in {WEIGHTS}")
        if self.weights == "tiled" and self.dtype != "float32":
            raise ValueError("weights='tiled' stores float32; use dtype='float32'")
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

    def _check_families(self):
        kind = dict(self.rope_scaling).get("rope_type", "default")
        if kind not in ROPE_TYPES:
            raise ValueError(f"RoPE scaling {kind!r} is not supported; supported: {ROPE_TYPES}")
        if self.norm not in NORMS:
            raise ValueError(f"norm {self.norm!r} not in {NORMS}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp {self.mlp!r} not in {MLPS}")
        if self.layer_types and len(self.layer_types) != self.layers:
            raise ValueError(f"{len(self.layer_types)} layer_types for {self.layers} layers")
        if not set(self.layer_types) <= set(LAYER_TYPES):
            raise ValueError(f"layer_types {set(self.layer_types)} not all in {LAYER_TYPES}")
        if "sliding_attention" in self.layer_types and self.sliding_window <= 0:
            raise ValueError("sliding_attention layers need sliding_window > 0")

    def is_sliding(self, layer: int) -> bool:
        """Whether `layer` attends only within `sliding_window` positions."""
        if self.layer_types:
            return self.layer_types[layer] == "sliding_attention"
        return self.sliding_window > 0

    @property
    def mixed_layers(self) -> bool:
        """Whether layers differ in window or RoPE base (a scan then selects per layer)."""
        return len({self.is_sliding(i) for i in range(self.layers)}) > 1

    def replace(self, **changes) -> ModelConfig:
        """Returns a copy with `changes` applied (e.g. `dtype='bfloat16'`)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The model's identity: `scan_layers` (how the blocks run, results identical) is
        left out, so converted caches and experiment workdirs do not depend on it."""
        fields = dataclasses.asdict(self)
        del fields["scan_layers"]
        # Family fields at their (llama) defaults are left out, so a llama/qwen2 model keeps
        # the identity it had before they existed.
        for f in dataclasses.fields(self)[dataclasses.fields(self).index(_FIRST_FAMILY) :]:
            if fields[f.name] == f.default:
                del fields[f.name]
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls(**json.loads(text))


_FIRST_FAMILY = next(f for f in dataclasses.fields(ModelConfig) if f.name == "rope_scaling")


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
