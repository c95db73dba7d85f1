"""One entry point to load a model (preset, GGUF file, or safetensors directory)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from models import config as config_lib
from models import gguf_loader, hf_loader, presets
from models import tokenizer as tokenizer_lib
from models.config import ModelConfig
from models.errors import IncompatibleModelsError, ModelFileError


class LoadedModel(NamedTuple):
    """What `load_model` returns; unpacks as `config, params, tokenizer = load_model(...)`."""

    config: ModelConfig
    params: Any
    tokenizer: tokenizer_lib.Tokenizer | None


def load_model(
    name_or_path: str | os.PathLike, dtype: str | None = None, prepare: bool = True,
    scan_layers: bool = False,
) -> LoadedModel:  # fmt: skip
    """Loads a preset (prepared on demand), a local .gguf file, or a safetensors directory.

    Args:
      name_or_path: a key of `presets.PRESETS`, a .gguf path, or an HF-layout directory.
      dtype: 'float32' (default) or 'bfloat16'.
      prepare: for presets, download and assemble the GGUF if it is not cached yet.
      scan_layers: run the blocks under a scan, params stacked over layers (faster to
        compile, slower to run on CPU; see `ModelConfig.scan_layers`).

    Returns:
      LoadedModel(config, params, tokenizer); tokenizer is None for a directory without
      tokenizer.json.

    Raises:
      ModelFileError: neither a preset nor an existing file/directory; unreadable files.
      HashMismatchError, UnknownArchitectureError: see the loaders.
    """
    path = _resolve(name_or_path, prepare)
    if path.is_dir():
        config, params = hf_loader.load_hf_dir(path, dtype, scan_layers)
        has_tok = (path / "tokenizer.json").is_file()
        model = LoadedModel(config, params, tokenizer_lib.from_files(path) if has_tok else None)
        from models import student  # a restricted draft head exported by student.export

        return student.load_extras(model, path)
    config, params = gguf_loader.load_gguf(path, dtype, scan_layers=scan_layers)
    return LoadedModel(config, params, _gguf_tokenizer(path))


def _resolve(name_or_path: str | os.PathLike, prepare: bool) -> Path:
    """Preset name -> its (prepared) GGUF; otherwise an existing file or directory."""
    name = str(name_or_path)
    if name in presets.PRESETS:
        path = presets.prepare(name) if prepare else presets.preset_path(name)
        if not path.is_file():
            raise ModelFileError(f"preset {name!r} not prepared: python -m models.prepare {name}")
        return path
    path = Path(name).expanduser()
    if not (path.is_dir() or path.is_file()):
        raise ModelFileError(
            f"{name!r} is neither a preset ({', '.join(presets.PRESETS)}) nor an existing "
            ".gguf file or safetensors directory"
        )
    return path


def load_tokenizer(
    name_or_path: str | os.PathLike, prepare: bool = True
) -> tokenizer_lib.Tokenizer | None:
    """Only the tokenizer of a preset, .gguf file or directory (None: a directory without
    tokenizer.json). Reads no weights and no model config, so it works for any GGUF whose
    tokenizer is supported, even if its architecture is not."""
    path = _resolve(name_or_path, prepare)
    if path.is_dir():
        return tokenizer_lib.from_files(path) if (path / "tokenizer.json").is_file() else None
    return _gguf_tokenizer(path)


def content_digest(name_or_path: str | os.PathLike) -> str | None:
    """sha256 identifying a local model's content (None for presets, pinned by name).

    A .gguf file: its sha256. A directory: the sha256 of its config.json and safetensors
    files' names and digests. Digests are memoised by path, size and mtime.
    """
    if str(name_or_path) in presets.PRESETS:
        return None
    path = _resolve(name_or_path, prepare=False)
    if path.is_file():
        return gguf_loader.cached_sha256(path)
    files = sorted([*path.glob("*.safetensors"), *path.glob("config.json")])
    listing = "\n".join(f"{f.name} {gguf_loader.cached_sha256(f)}" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def _gguf_tokenizer(path: Path) -> tokenizer_lib.Tokenizer:
    """The GGUF's tokenizer, cached next to the converted weights (parsing GGUF takes seconds)."""
    cached = gguf_loader.converted_path(path, ".tokenizer.json")
    if cached.is_file():
        try:
            return tokenizer_lib.Tokenizer.from_json(cached.read_text())
        except Exception:
            pass  # unreadable cache: rebuild below
    tok = tokenizer_lib.from_gguf_metadata(gguf_loader.open_gguf(path)[1])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(tok.to_json())
    tmp.replace(cached)
    return tok


def load_model_info(name_or_path: str | os.PathLike, prepare: bool = True) -> LoadedModel:
    """Like `load_model` but without weights: LoadedModel(config, None, tokenizer).

    Cheap enough to run `check_compatible` before loading two large models.
    """
    path = _resolve(name_or_path, prepare)
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise ModelFileError(f"{path} is not a model directory (no config.json)")
        raw = json.loads(cfg_path.read_text())
        config = config_lib.from_hf_config(raw, hf_loader.valid_vocab_size(path))
        has_tok = (path / "tokenizer.json").is_file()
        return LoadedModel(config, None, tokenizer_lib.from_files(path) if has_tok else None)
    config = gguf_loader.cached_config(path)
    if config is None:
        reader, meta = gguf_loader.open_gguf(path)
        names = {t.name for t in reader.tensors}
        embed = [t for t in reader.tensors if t.name == "token_embd.weight"]
        if not embed:
            raise ModelFileError(f"{path} has no token_embd.weight tensor")
        config = config_lib.from_gguf_metadata(meta, names, int(embed[0].shape[-1]))
    return LoadedModel(config, None, _gguf_tokenizer(path))


def _id_table(tok: tokenizer_lib.Tokenizer, size: int) -> list[str | None]:
    """Token string of every id below `size` (None where the id has no token)."""
    table: list[str | None] = [None] * size
    for token, i in tok.backend.get_vocab(with_added_tokens=True).items():
        if i < size:
            table[i] = token
    return table


def _rules_difference(dt: tokenizer_lib.Tokenizer, tt: tokenizer_lib.Tokenizer) -> str | None:
    """Which text-splitting rule differs (model settings, merges, normalizer,
    pre-tokenizer), or None. The id table is compared separately."""
    ds, ts = dt._state(), tt._state()
    dm, tm = dict(ds["model"]), dict(ts["model"])
    for m in (dm, tm):
        m.pop("vocab", None)
    dmerges, tmerges = dm.pop("merges", None) or [], tm.pop("merges", None) or []
    if dmerges != tmerges:
        pairs = zip(dmerges, tmerges, strict=False)
        k = next((i for i, (x, y) in enumerate(pairs) if x != y), None)
        if k is None:
            return f"merges differ: the draft has {len(dmerges)}, the target {len(tmerges)}"
        return f"merges differ: #{k} is {dmerges[k]!r} in the draft, {tmerges[k]!r} in the target"
    for key in sorted(set(dm) | set(tm)):
        if dm.get(key) != tm.get(key):
            return (
                f"model setting {key!r} is {dm.get(key)!r} in the draft, "
                f"{tm.get(key)!r} in the target"
            )
    for part in ("normalizer", "pre_tokenizer"):
        if ds.get(part) != ts.get(part):
            return f"{part.replace('_', '-')}s differ: {ds.get(part)} vs {ts.get(part)}"
    return None


def check_compatible(draft, target) -> None:
    """Checks that a draft can propose tokens for a target: same tokenizer on the ids both
    can produce.

    The models may differ in padding: ids at or past `config.valid_vocab_size` (rows a
    checkpoint adds to round its embedding up, e.g. Qwen's 151,936 rows for 151,665 real
    ids) are never sampled, so neither their number nor their token strings matter. Note
    that `rsd_jax.generate` also needs equal logit widths (`config.vocab_size`): pad or crop
    one model's logits (with probability 0) when the row counts differ.

    Args:
      draft, target: LoadedModel (or any object with `.config` and `.tokenizer`).

    Raises:
      IncompatibleModelsError: naming the first difference found, in this order: a missing
        tokenizer, the tokenizer type, the number of valid ids, the first id whose token
        differs, BOS/EOS/add-BOS, the set of control ids, and merges / model settings /
        normalizer / pre-tokenizer.
    """
    dc, tc = draft.config, target.config
    dt, tt = draft.tokenizer, target.tokenizer
    if (dt is None) != (tt is None):
        raise IncompatibleModelsError("only one of draft and target has a tokenizer")
    if dt is not None and dt.kind() != tt.kind():
        raise IncompatibleModelsError(
            f"tokenizers differ: the draft's is {dt.kind()}, the target's {tt.kind()}"
        )
    if dc.valid_vocab_size != tc.valid_vocab_size:
        raise IncompatibleModelsError(
            f"vocabularies differ: draft has {dc.valid_vocab_size} valid ids ({dc.vocab_size} "
            f"rows), target has {tc.valid_vocab_size} ({tc.vocab_size} rows)"
        )
    if dt is None:
        return
    valid = dc.valid_vocab_size
    dtab, ttab = _id_table(dt, valid), _id_table(tt, valid)
    for i, (a, b) in enumerate(zip(dtab, ttab, strict=True)):
        if a != b:
            raise IncompatibleModelsError(
                f"tokenizers differ: id {i} is {a!r} in the draft but {b!r} in the target"
            )
    for attr in ("bos_id", "eos_id", "add_bos"):
        if getattr(dt, attr) != getattr(tt, attr):
            raise IncompatibleModelsError(
                f"tokenizers differ: draft {attr}={getattr(dt, attr)}, target {getattr(tt, attr)}"
            )
    dspecial = {i for i in dt.special_ids if i < valid}
    tspecial = {i for i in tt.special_ids if i < valid}
    if dspecial != tspecial:
        i = min(dspecial ^ tspecial)
        side = "draft" if i in dspecial else "target"
        raise IncompatibleModelsError(
            f"tokenizers differ: id {i} ({dtab[i]!r}) is a control token only in the {side}"
        )
    rules = _rules_difference(dt, tt)
    if rules:
        raise IncompatibleModelsError(f"tokenizers differ: {rules}")
