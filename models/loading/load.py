"""One entry point to load a model (preset, GGUF file, or safetensors directory)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from models.arch import quantize
from models.errors import ModelFileError
from models.loaded import LoadedModel
from models.loading import draft_dir, families, gguf_loader, hf_loader, presets
from models.loading import tokenizer as tokenizer_lib


def load_model(
    name_or_path: str | os.PathLike, dtype: str | None = None, prepare: bool = True,
    scan_layers: bool = False, weights: str = "float",
) -> LoadedModel:  # fmt: skip
    """Loads a preset (prepared on demand), a local .gguf file, or a safetensors directory.

    Args:
      name_or_path: a key of `presets.PRESETS`, a .gguf path, or an HF-layout directory.
      dtype: 'float32' (default) or 'bfloat16'.
      prepare: for presets, download and assemble the GGUF if it is not cached yet.
      scan_layers: run the blocks under a scan, params stacked over layers (faster to
        compile, slower to run on CPU; see `ModelConfig.scan_layers`).
      weights: the layout to store the weights in (`models.arch.quantize`): 'float', or
        'tiled' / 'int8' (float32 only), converted tensor by tensor as they load from a
        GGUF's cache, so the float weights never exist all at once.

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
        model = draft_dir.load_extras(model, path)  # what an exported draft adds
        return quantize.convert(model, weights, consume=True)
    if weights == "float" or scan_layers:
        config, params = gguf_loader.load_gguf(path, dtype, scan_layers=scan_layers)
        model = LoadedModel(config, params, _gguf_tokenizer(path))
        return quantize.convert(model, weights, consume=True)
    leaf = functools.partial(_tiled, int8=weights == "int8")
    config, params = gguf_loader.load_gguf(path, dtype, leaf=leaf)
    config = config.replace(weights=weights)  # checks the dtype
    quantize.check_layout(config, params)
    return LoadedModel(config, params, _gguf_tokenizer(path))


def _tiled(name, w, dtype, int8: bool):
    return quantize.tiled_leaf(name, w, dtype, int8)


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
        config = families.from_hf_config(raw, hf_loader.valid_vocab_size(path))
        config = draft_dir.extras_config(config, path)  # an exported draft's true vocabulary
        has_tok = (path / "tokenizer.json").is_file()
        return LoadedModel(config, None, tokenizer_lib.from_files(path) if has_tok else None)
    config = gguf_loader.cached_config(path)
    if config is None:
        reader, meta = gguf_loader.open_gguf(path)
        names = {t.name for t in reader.tensors}
        embed = [t for t in reader.tensors if t.name == "token_embd.weight"]
        if not embed:
            raise ModelFileError(f"{path} has no token_embd.weight tensor")
        config = families.from_gguf_metadata(meta, names, int(embed[0].shape[-1]))
    return LoadedModel(config, None, _gguf_tokenizer(path))
