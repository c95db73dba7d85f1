"""Tiny models for tests: the toy n-gram pair, a byte-level BPE vocabulary, GGUF and HF writers.

`write_tiny_gguf` writes float32 tensors the way llama.cpp's converter does, including the
Q/K row permutation for the llama architecture, so loading it exercises the real GGUF path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from models import toy
from models.arch.config import ModelConfig
from models.loading.gguf_loader import build_params, per_layer_tensors

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = ("Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r")


def byte_chars() -> list[str]:
    """The GPT-2 byte-level alphabet: byte b -> a printable unicode character."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def toy_pair(seed: int = 0, vocab: int = 4, order: int = 3, alpha: float = 0.6,
             agreement: float = 0.6):  # fmt: skip
    """The tests' toy draft/target pair (:func:`models.toy.random_pair` from ``seed``).

    Returns:
      ``(target, draft, target_table)``: two ``rsd_jax.Model`` s over order-
      ``order`` n-gram tables of ``vocab`` ids, and the target's float64 table, whose exact
      conditionals the tests compare against.
    """
    rng = np.random.default_rng(seed)
    target, draft = toy.random_pair(rng, vocab, order, alpha, agreement)
    return toy.as_model(target), toy.as_model(draft), target


def tiny_vocab(merges=MERGES) -> tuple[list[str], list[int], list[str]]:
    """(tokens, GGUF token types, merges): 3 control tokens, 256 bytes, one token per merge."""
    tokens = list(SPECIALS) + byte_chars() + [m.replace(" ", "") for m in merges]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, list(merges)


def tiny_config(arch="llama", **kw) -> ModelConfig:
    """A 2-layer model over `tiny_vocab()` (llama: interleaved, tied; qwen2: biases, head)."""
    vocab = len(tiny_vocab()[0])
    base = dict(
        arch=arch, vocab_size=vocab, valid_vocab_size=vocab, hidden=32, layers=2, heads=4,
        kv_heads=2, head_dim=8, mlp_hidden=48, rms_eps=1e-5 if arch == "llama" else 1e-6,
        rope_theta=1e4, rope_layout="interleaved" if arch == "llama" else "rotate_half",
        qkv_bias=arch == "qwen2", tied_embeddings=arch == "llama", bos_id=1, eos_id=2, pad_id=0,
        max_positions=128, name=f"tiny-{arch}",
    )  # fmt: skip
    base.update(kw)
    return ModelConfig(**base)


def scanned(config: ModelConfig, params) -> tuple[ModelConfig, dict]:
    """The same model with `scan_layers=True`: its per-layer params stacked over layers."""
    flat = per_layer_tensors(params)
    return config.replace(scan_layers=True), build_params(list(flat), flat.pop, config.dtype, True)


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's HF->GGUF Q/K permutation of (out, ...) rows: per head, (2, E/2) -> (E/2, 2)."""
    e = w.shape[0] // heads
    return w.reshape(heads, 2, e // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_LAYER = {
    "attn_norm/scale": "attn_norm.weight",
    "attn/q/kernel": "attn_q.weight",
    "attn/k/kernel": "attn_k.weight",
    "attn/v/kernel": "attn_v.weight",
    "attn/q/bias": "attn_q.bias",
    "attn/k/bias": "attn_k.bias",
    "attn/v/bias": "attn_v.bias",
    "attn/o/kernel": "attn_output.weight",
    "mlp_norm/scale": "ffn_norm.weight",
    "mlp/gate/kernel": "ffn_gate.weight",
    "mlp/up/kernel": "ffn_up.weight",
    "mlp/down/kernel": "ffn_down.weight",
    "attn/q_norm/scale": "attn_q_norm.weight",
    "attn/k_norm/scale": "attn_k_norm.weight",
    "attn_post_norm/scale": "post_attention_norm.weight",
    "mlp_post_norm/scale": "post_ffw_norm.weight",
}
_GGUF_TOP = {
    "embed/embedding": "token_embd.weight",
    "final_norm/scale": "output_norm.weight",
    "lm_head/kernel": "output.weight",
}


def write_tiny_gguf(
    path: str | os.PathLike, config: ModelConfig, params, arch_name: str | None = None,
    pre: str = "smollm", chat_template: str | None = None,
) -> Path:  # fmt: skip
    """Writes `params` (rotate-half layout, i.e. HF order) as a float32 GGUF file.

    For `config.arch == 'llama'` the Q/K rows (and biases) are permuted as llama.cpp's
    converter does, so the file must be read with interleaved RoPE. A `gemma3_text` config
    is written as llama.cpp's `gemma3` (norm weights stored as 1 + w, the window; the
    layer pattern, local RoPE base and query scale are llama.cpp's fixed ones, so the
    config must have them). `arch_name` overrides the declared architecture (to test
    unknown ones).
    """
    import gguf

    arch = arch_name or {"gemma3_text": "gemma3"}.get(config.arch, config.arch)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(config.name)
    writer.add_block_count(config.layers)
    writer.add_context_length(config.max_positions or 128)
    writer.add_embedding_length(config.hidden)
    writer.add_feed_forward_length(config.mlp_hidden)
    writer.add_head_count(config.heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_eps)
    if config.head_dim != config.hidden // config.heads:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    if config.sliding_window:
        writer.add_sliding_window(config.sliding_window)
    tokens, types, merges = tiny_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_id)
    writer.add_eos_token_id(config.eos_id)
    writer.add_pad_token_id(config.pad_id)
    writer.add_add_bos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)
    for name, w in per_layer_tensors(params).items():
        w = np.asarray(w, np.float32)
        if name.endswith("kernel"):
            w = np.ascontiguousarray(w.T)  # GGUF stores (out, in)
        if name.endswith("scale") and config.norm == "rms_plus_one":
            w = w + np.float32(1.0)  # llama.cpp's Gemma convention
        if name in _GGUF_TOP:
            target = _GGUF_TOP[name]
        else:
            layer, rest = name.split("/", 1)
            target = f"blk.{layer.split('_')[1]}.{_GGUF_LAYER[rest]}"
            if config.arch == "llama" and rest.split("/")[1:2] in (["q"], ["k"]):
                heads = config.heads if "/q/" in rest else config.kv_heads
                w = permute_rows(w, heads)
        writer.add_tensor(target, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def write_tiny_tokenizer_files(directory: str | os.PathLike, chat_template: str) -> None:
    """Writes tokenizer.json / tokenizer_config.json for `tiny_vocab()` into `directory`."""
    from models.loading.tokenizer import build_byte_level_bpe

    tokens, types, merges = tiny_vocab()
    backend = build_byte_level_bpe(tokens, merges, "smollm")
    from tokenizers import AddedToken

    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    directory = Path(directory)
    backend.save(str(directory / "tokenizer.json"))
    cfg = {"eos_token": SPECIALS[2], "bos_token": SPECIALS[1], "pad_token": SPECIALS[0]}
    cfg["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_pair(directory: str | os.PathLike, agreement: float = 0.8) -> tuple[Path, Path]:
    """A tiny target and a draft near it (``agreement`` of the target's weights plus noise)
    as qwen2 GGUF files with the tiny byte-level tokenizer and a ChatML template; returns
    ``(target_path, draft_path)``. Text in, text out on a few hundred KB."""
    import jax

    from models.arch import decoder

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_config("qwen2")
    target = decoder.init_params(config, jax.random.PRNGKey(0), noise=0.3)
    other = decoder.init_params(config, jax.random.PRNGKey(1), noise=0.3)
    draft = jax.tree.map(lambda t, o: agreement * t + (1 - agreement) * o, target, other)
    paths = []
    for name, params in (("target", target), ("draft", draft)):
        paths.append(
            write_tiny_gguf(directory / f"tiny-{name}.gguf", config, params, chat_template=CHATML)
        )
    return paths[0], paths[1]
