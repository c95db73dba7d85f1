"""Static model hyperparameters: `ModelConfig`, a frozen (hashable) dataclass.

Built from GGUF metadata or an HF config.json by :mod:`models.loading.families`.
"""

from __future__ import annotations

import dataclasses
import json

from models.errors import UnknownArchitectureError

ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma2", "gemma3_text", "opt")
ROPE_LAYOUTS = ("interleaved", "rotate_half")
DTYPES = ("float32", "bfloat16")
WEIGHTS = ("float", "tiled", "int8")  # how matrices are stored (ModelConfig.weights)
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
NORMS = ("rms", "rms_plus_one", "layer")
MLPS = ("swiglu", "geglu_tanh", "relu")
LAYER_TYPES = ("full_attention", "sliding_attention")


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
        params (see `models.arch.head`): every other id gets logit -1e30. For drafts
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
        `models.arch.quantize`): 'float' (in `dtype`, XLA's products), 'tiled' (float32 in 64-column
        tiles, computed by `models.kernels.tiled_matmul`: the same model to float rounding, and
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
