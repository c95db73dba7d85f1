"""Byte-level BPE tokenizers built from GGUF metadata or a tokenizer.json, with chat templates.

Built directly on the `tokenizers` package (no transformers, no torch). GGUF pre-tokenizer
names map to split regexes as in llama.cpp; SmolLM2 ('smollm') splits digits individually.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.errors import ModelFileError

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GGUF `tokenizer.ggml.pre` -> (split regex, split digits individually first).
PRE_TOKENIZERS = {
    "default": (_GPT2, False),
    "gpt2": (_GPT2, False),
    "smollm": (_GPT2, True),
    "qwen2": (_QWEN2, False),
    "llama-bpe": (_LLAMA3, False),
}
_CONTROL, _USER_DEFINED = 3, 4  # GGUF token types

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_byte_level_bpe(tokens: Sequence[str], merges: Sequence[Any], pre: str):
    """A `tokenizers.Tokenizer` for a byte-level BPE vocabulary.

    Args:
      tokens: id -> token string (GPT-2 byte alphabet).
      merges: 'a b' strings or (a, b) pairs, highest priority first.
      pre: GGUF pre-tokenizer name, a key of PRE_TOKENIZERS.
    """
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"unsupported pre-tokenizer {pre!r}; known: {sorted(PRE_TOKENIZERS)}")
    regex, digits = PRE_TOKENIZERS[pre]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    return tok


class Tokenizer:
    """Text <-> ids, special ids and a chat template.

    Attributes:
      backend: the `tokenizers.Tokenizer`.
      bos_id, eos_id, pad_id: special ids (-1 if none).
      add_bos: whether `encode` prepends BOS by default.
      chat_template: a Jinja2 chat template (ChatML if the checkpoint has none).
      special_ids: ids of control tokens (skipped by `decode(skip_special=True)`).
    """

    def __init__(
        self, backend, bos_id=-1, eos_id=-1, pad_id=-1, add_bos=False, chat_template=None,
        special_ids=(),
    ):  # fmt: skip
        self.backend = backend
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.add_bos = add_bos
        self.chat_template = chat_template or CHATML_TEMPLATE
        self.special_ids = frozenset(special_ids)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (max id + 1)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Tokenizes `text`; special-token strings such as '<|im_end|>' become their ids."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id >= 0:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        return self.backend.decode(ids, skip_special_tokens=False)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Renders [{'role': 'user', 'content': ...}, ...] with the checkpoint's template."""
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        bos = self.backend.id_to_token(self.bos_id) if self.bos_id >= 0 else ""
        eos = self.backend.id_to_token(self.eos_id) if self.eos_id >= 0 else ""
        return env.from_string(self.chat_template).render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
        )

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> list[int]:
        """`encode(apply_chat_template(messages))` (templates add their own BOS if any)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), add_bos=False)

    def fingerprint(self) -> str:
        """sha256 of the id->token table, merges, (pre-)normalization and special ids."""
        state = json.loads(self.backend.to_str())
        model = state["model"]
        added = sorted((t["id"], t["content"]) for t in state.get("added_tokens", []))
        payload = json.dumps(
            [sorted(model["vocab"].items(), key=lambda kv: kv[1]), model["merges"], added,
             state.get("normalizer"), state.get("pre_tokenizer"),
             [self.bos_id, self.eos_id, self.pad_id, self.add_bos]],
            ensure_ascii=True,
        )  # fmt: skip
        return hashlib.sha256(payload.encode()).hexdigest()

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    def to_json(self) -> str:
        """Serializes everything (used to cache tokenizers built from GGUF metadata)."""
        return json.dumps({
            "backend": self.backend.to_str(), "bos_id": self.bos_id, "eos_id": self.eos_id,
            "pad_id": self.pad_id, "add_bos": self.add_bos, "chat_template": self.chat_template,
            "special_ids": sorted(self.special_ids),
        })  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        state = json.loads(text)
        backend = HFTokenizer.from_str(state.pop("backend"))
        return cls(backend, **state)

    def save(self, directory: str | os.PathLike) -> None:
        """Writes tokenizer.json and tokenizer_config.json (readable by `from_files`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        cfg = {"add_bos_token": self.add_bos, "chat_template": self.chat_template}
        for key, i in (("bos_token", self.bos_id), ("eos_token", self.eos_id),
                       ("pad_token", self.pad_id)):  # fmt: skip
            cfg[key] = self.id_to_token(i) if i >= 0 else None
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def from_gguf_metadata(meta: Mapping[str, Any]) -> Tokenizer:
    """Builds the tokenizer stored in a GGUF file's metadata (byte-level BPE, 'gpt2' model).

    Raises:
      ValueError: another tokenizer model (e.g. SentencePiece 'llama') or pre-tokenizer.
    """
    from tokenizers import AddedToken

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r} (only byte-level BPE 'gpt2')")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = meta.get("tokenizer.ggml.merges") or []
    backend = build_byte_level_bpe(tokens, merges, meta.get("tokenizer.ggml.pre", "default"))
    added = [
        AddedToken(tok, special=(typ == _CONTROL), normalized=False)
        for tok, typ in zip(tokens, types, strict=True)
        if typ in (_CONTROL, _USER_DEFINED)
    ]
    backend.add_tokens(added)
    special = [i for i, typ in enumerate(types) if typ == _CONTROL]
    eos = int(meta.get("tokenizer.ggml.eos_token_id", -1))
    return Tokenizer(
        backend,
        bos_id=int(meta.get("tokenizer.ggml.bos_token_id", -1)),
        eos_id=eos,
        pad_id=int(meta.get("tokenizer.ggml.padding_token_id", eos)),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
        special_ids=special,
    )


def from_files(directory: str | os.PathLike) -> Tokenizer:
    """Loads `tokenizer.json` (and `tokenizer_config.json` if present) from a directory."""
    from tokenizers import Tokenizer as HFTokenizer

    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise ModelFileError(f"no tokenizer.json in {directory}")
    try:
        backend = HFTokenizer.from_file(str(path))
    except Exception as e:
        raise ModelFileError(f"cannot read {path}: {e}") from e
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}

    def token_id(key):
        value = cfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        found = backend.token_to_id(value) if value else None
        return -1 if found is None else found

    state = json.loads(backend.to_str())
    special = [t["id"] for t in state.get("added_tokens", []) if t.get("special")]
    eos = token_id("eos_token")
    pad = token_id("pad_token")
    return Tokenizer(
        backend,
        bos_id=token_id("bos_token"),
        eos_id=eos,
        pad_id=eos if pad < 0 else pad,
        add_bos=bool(cfg.get("add_bos_token", False)),
        chat_template=cfg.get("chat_template"),
        special_ids=special,
    )
