"""Tokenizers built from GGUF metadata or a model directory's tokenizer.json, with chat templates.

Built directly on the `tokenizers` package (no transformers, no torch). Two GGUF vocabulary
kinds are understood:

- 'gpt2' (byte-level BPE): `tokenizer.ggml.pre` names a split regex as in llama.cpp;
  SmolLM2 ('smollm') also splits digits individually.
- 'llama' (SentencePiece, Llama 2 / Gemma): llama.cpp encodes such a vocabulary by greedy
  merging, always joining the adjacent pair whose concatenation is the token with the best
  score, then spelling leftover symbols with the `<0xNN>` byte tokens. That is a BPE whose
  merge list is every split of every token, ranked by the token's score; see
  `build_sentencepiece_bpe`.

A directory is read through its own tokenizer.json, whatever model it holds.
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
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4  # GGUF token types
_SPACE = "\u2581"  # SentencePiece's visible space
# The BPE model settings of `build_byte_level_bpe` (see `Tokenizer.fingerprint`).
_BPE_DEFAULTS = {
    "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
    "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
    "ignore_merges": False,
}  # fmt: skip

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma's turn format, for GGUF files that carry no template: BOS, then one
# <start_of_turn>ROLE ... <end_of_turn> block per message ('assistant' is called 'model',
# a system message is folded into the first user turn).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% else %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + ns.system + message['content'] | trim"
    " + '<end_of_turn>\n' }}{% set ns.system = '' %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
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


def sentencepiece_merges(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> list[tuple[str, str]]:
    """Merges reproducing llama.cpp's greedy SentencePiece encoding, best first.

    llama.cpp repeatedly joins the adjacent pair of symbols whose concatenation is the
    highest-scoring token (leftmost on ties). Listing, for every ordinary token from the
    best score down, each way of cutting it into two ordinary tokens gives a BPE that makes
    the same choices: a pair can only merge into the token it spells, and its rank is that
    token's place in the score order. Control, user-defined and byte tokens never come out
    of a merge (the first two are matched in the raw text before merging).
    """
    normal = {t for t, typ in zip(tokens, types, strict=True) if typ == _NORMAL}
    order = sorted(
        (i for i, t in enumerate(tokens) if types[i] == _NORMAL and len(t) > 1),
        key=lambda i: (-float(scores[i]), i),
    )
    merges = []
    for i in order:
        t = tokens[i]
        merges += [(t[:k], t[k:]) for k in range(1, len(t)) if t[:k] in normal and t[k:] in normal]
    return merges


def build_sentencepiece_bpe(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int], add_space_prefix: bool,
    unk: str | None = None,
):  # fmt: skip
    """A `tokenizers.Tokenizer` equivalent to llama.cpp's SentencePiece ('llama') tokenizer.

    Spaces become '\u2581' (with one prepended to each stretch of text between special
    tokens when `add_space_prefix`), the text is merged as `sentencepiece_merges` says, and
    characters left without a token are spelled with the `<0xNN>` byte tokens. Control and
    user-defined tokens are matched in the raw text first, as llama.cpp does.

    Args:
      tokens, scores, types: GGUF `tokenizer.ggml.tokens` / `scores` / `token_type`.
      add_space_prefix: GGUF `tokenizer.ggml.add_space_prefix`.
      unk: the unknown token, used only where no byte token exists.
    """
    from tokenizers import AddedToken, decoders, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    merges = sentencepiece_merges(tokens, scores, types)
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=False)
    tok = HFTokenizer(bpe)
    space = normalizers.Replace(" ", _SPACE)
    tok.normalizer = (
        normalizers.Sequence([normalizers.Prepend(_SPACE), space]) if add_space_prefix else space
    )
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_tokens([
        AddedToken(t, special=(typ == _CONTROL), normalized=False)
        for t, typ in zip(tokens, types, strict=True)
        if typ in (_CONTROL, _USER_DEFINED)
    ])  # fmt: skip
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
        self._parsed = None

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
        """sha256 of the id->token table, merges, (pre-)normalization and special ids.

        Model settings that a byte-level BPE leaves at their defaults (byte fallback, unknown
        token, ...) and the model type enter the digest only when they differ from those
        defaults, so byte-level BPE digests, and the caches keyed by them, are unchanged.
        """
        state = self._state()
        model = dict(state["model"])
        kind = model.pop("type", "BPE")
        vocab, merges = model.pop("vocab", {}), model.pop("merges", None)
        table = sorted(vocab.items(), key=lambda kv: kv[1]) if isinstance(vocab, dict) else vocab
        added = sorted((t["id"], t["content"]) for t in state.get("added_tokens", []))
        parts = [
            table, merges, added, state.get("normalizer"), state.get("pre_tokenizer"),
            [self.bos_id, self.eos_id, self.pad_id, self.add_bos],
        ]  # fmt: skip
        extra = {k: v for k, v in model.items() if _BPE_DEFAULTS.get(k, v) != v}
        extra.update({k: v for k, v in model.items() if k not in _BPE_DEFAULTS})
        if kind != "BPE":
            extra["type"] = kind
        if extra:
            parts.append(extra)
        payload = json.dumps(parts, ensure_ascii=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def kind(self) -> str:
        """The tokenizer's family in words: 'BPE (byte-level)', 'BPE (SentencePiece spaces,
        byte fallback)', 'Unigram', ..."""
        state = self._state()
        model = state["model"]
        if model.get("type", "BPE") != "BPE":
            return str(model["type"])
        rules = json.dumps(
            [state.get("normalizer"), state.get("pre_tokenizer"), state.get("decoder")],
            ensure_ascii=False,
        )
        style = "byte-level" if "ByteLevel" in rules else "plain"
        if style == "plain" and _SPACE in rules:
            style = "SentencePiece spaces"
        return f"BPE ({style}{', byte fallback' if model.get('byte_fallback') else ''})"

    def _state(self) -> dict:
        """The backend's serialized state (parsed once: it does not change)."""
        if self._parsed is None:
            self._parsed = json.loads(self.backend.to_str())
        return self._parsed

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
    """Builds the tokenizer stored in a GGUF file's metadata.

    Byte-level BPE ('gpt2') and SentencePiece ('llama') vocabularies are supported. A Gemma
    file without a chat template gets `GEMMA_TEMPLATE` (others fall back to ChatML).

    Raises:
      ValueError: another tokenizer model (e.g. 'bert', 't5') or an unknown pre-tokenizer.
    """
    kind = meta.get("tokenizer.ggml.model")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens))
    template = meta.get("tokenizer.chat_template")
    if kind == "gpt2":
        from tokenizers import AddedToken

        merges = meta.get("tokenizer.ggml.merges") or []
        backend = build_byte_level_bpe(tokens, merges, meta.get("tokenizer.ggml.pre", "default"))
        added = [
            AddedToken(tok, special=(typ == _CONTROL), normalized=False)
            for tok, typ in zip(tokens, types, strict=True)
            if typ in (_CONTROL, _USER_DEFINED)
        ]
        backend.add_tokens(added)
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    elif kind == "llama":
        unk = int(meta.get("tokenizer.ggml.unknown_token_id", -1))
        backend = build_sentencepiece_bpe(
            tokens,
            list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)),
            types,
            add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
            unk=tokens[unk] if 0 <= unk < len(tokens) else None,
        )
        # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
        if template is None and str(meta.get("general.architecture", "")).startswith("gemma"):
            template = GEMMA_TEMPLATE
    else:
        raise ValueError(
            f"unsupported GGUF tokenizer model {kind!r} (supported: byte-level BPE 'gpt2', "
            "SentencePiece 'llama')"
        )
    special = [i for i, typ in enumerate(types) if typ == _CONTROL]
    eos = int(meta.get("tokenizer.ggml.eos_token_id", -1))
    return Tokenizer(
        backend,
        bos_id=int(meta.get("tokenizer.ggml.bos_token_id", -1)),
        eos_id=eos,
        pad_id=int(meta.get("tokenizer.ggml.padding_token_id", eos)),
        add_bos=add_bos,
        chat_template=template,
        special_ids=special,
    )


def _read_json(path: Path) -> dict:
    """A JSON object from `path`, {} if the file is absent; ModelFileError if unreadable."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except ValueError as e:
        raise ModelFileError(f"{path} is not valid JSON: {e}") from e
    return value if isinstance(value, dict) else {}


def _chat_template(directory: Path, cfg: Mapping[str, Any]) -> str | None:
    """chat_template.jinja if present, else tokenizer_config's `chat_template` (a string, or
    a list of {'name', 'template'} of which the one named 'default' is taken)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = cfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    return template if isinstance(template, str) else None


def from_files(directory: str | os.PathLike) -> Tokenizer:
    """Loads a model directory's own tokenizer (tokenizer.json, whatever model it holds).

    Special ids come from the token strings in tokenizer_config.json (`bos_token`, ...),
    else from generation_config.json, else from config.json (`bos_token_id`, ...; the first
    of a list); padding falls back to EOS. BOS is prepended when tokenizer_config says
    `add_bos_token`, or, without that key, when tokenizer.json's post-processor adds it.
    The chat template is chat_template.jinja or tokenizer_config's `chat_template`.

    Raises:
      ModelFileError: no tokenizer.json, or an unreadable one.
    """
    from tokenizers import Tokenizer as HFTokenizer

    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise ModelFileError(f"no tokenizer.json in {directory}")
    try:
        backend = HFTokenizer.from_file(str(path))
    except Exception as e:
        raise ModelFileError(f"cannot read {path}: {e}") from e
    cfg = _read_json(directory / "tokenizer_config.json")
    others = [_read_json(directory / n) for n in ("generation_config.json", "config.json")]

    def special(name):
        value = cfg.get(f"{name}_token")
        value = value.get("content") if isinstance(value, dict) else value
        found = backend.token_to_id(value) if isinstance(value, str) and value else None
        if found is not None:
            return found
        for other in others:
            value = other.get(f"{name}_token_id")
            value = value[0] if isinstance(value, list) and value else value
            if isinstance(value, int) and value >= 0:
                return value
        return -1

    bos, eos, pad = special("bos"), special("eos"), special("pad")
    add_bos = cfg.get("add_bos_token")
    if add_bos is None:  # e.g. Llama 3: BOS comes from the post-processor
        with_specials = backend.encode("a", add_special_tokens=True).ids
        add_bos = bos >= 0 and with_specials[:1] == [bos]
    state = json.loads(backend.to_str())
    return Tokenizer(
        backend,
        bos_id=bos,
        eos_id=eos,
        pad_id=eos if pad < 0 else pad,
        add_bos=bool(add_bos),
        chat_template=_chat_template(directory, cfg),
        special_ids=[t["id"] for t in state.get("added_tokens", []) if t.get("special")],
    )
