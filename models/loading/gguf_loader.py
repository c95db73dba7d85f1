"""Load GGUF checkpoints (llama / qwen2 / gemma3) into float parameters, with an on-disk cache.

Dequantization uses the `gguf` package. The float32 parameters are cached as
`<cache>/converted/<sha256 of the GGUF>-<code version>.safetensors` (config JSON and a
checksum per tensor in its metadata, checked on every load), so the second load only reads
that file; a change of this conversion code, of config reading or of the tokenizer rules
changes the code version and the cache is rebuilt. llama-arch GGUFs keep llama.cpp's Q/K
row permutation; their config says `rope_layout='interleaved'`, which is the matching rotation.
gemma3 GGUFs hold unpermuted Q/K (rotate-half) and, as llama.cpp's converter writes them,
norm weights 1 + w: 1 is subtracted so that they load as the gemma3_text family's
`rms_plus_one` norms (x * (1 + w)), like an HF Gemma 3 checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.arch import config as config_lib
from models.arch import decoder
from models.errors import ModelFileError
from models.loading import families

# Relative to models/: the reader, the config and its readers, the tokenizer, the loader.
_CODE = (
    "loading/gguf_loader.py",
    "arch/config.py",
    "loading/families.py",
    "loading/tokenizer.py",
    "loading/load.py",
)


def _code_version() -> str:
    """Digest of the code that turns a GGUF into the cached params, config and tokenizer:
    any change to it makes older converted caches stale, so they are rebuilt."""
    here = Path(__file__).parent.parent
    digest = hashlib.sha256(b"rsd_jax-params-v2")
    for name in _CODE:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:12]


CODE_VERSION = _code_version()
CACHE_FORMAT = f"rsd_jax-params-v2-{CODE_VERSION}"


def checksum(array: np.ndarray) -> int:
    """A cheap whole-array checksum (sum of the 32-bit words): any flipped byte changes it."""
    words = np.ascontiguousarray(array).reshape(-1).view(np.uint32)
    return int(np.add.reduce(words, dtype=np.uint64)) & 0xFFFFFFFFFFFFFFFF


def cache_root() -> Path:
    """The cache directory: $RSD_JAX_CACHE, else ~/.cache/rsd_jax."""
    return Path(os.environ.get("RSD_JAX_CACHE") or Path.home() / ".cache" / "rsd_jax")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path, known: str | None = None) -> str:
    """sha256 of `path`, memoised in a sidecar JSON keyed by (size, mtime) to skip rehashing.

    Args:
      path: the file.
      known: a digest just computed by the caller while writing the file, to memoise as is.
    """
    stat = path.stat()
    memo = cache_root() / "hashes.json"
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        table = json.loads(memo.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table or known is not None:
        table[key] = known or sha256_file(path)
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=0))
        tmp.replace(memo)
    return table[key]


def open_gguf(path: str | os.PathLike):
    """Opens a GGUF file, turning missing/truncated/corrupt files into ModelFileError.

    Returns:
      (reader, metadata) where metadata maps keys to Python values.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
        meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as e:  # gguf raises ValueError, IndexError, struct errors, ...
        msg = f"{path} is not a readable GGUF file (truncated or corrupt?): {e}"
        raise ModelFileError(msg) from e
    size = path.stat().st_size
    if end > size:
        raise ModelFileError(f"{path} is truncated: tensors need {end} bytes, file has {size}")
    return reader, meta


_LAYER_NAMES = {
    "attn_norm.weight": ("attn_norm", "scale"),
    "attn_q.weight": ("attn", "q", "kernel"),
    "attn_k.weight": ("attn", "k", "kernel"),
    "attn_v.weight": ("attn", "v", "kernel"),
    "attn_q.bias": ("attn", "q", "bias"),
    "attn_k.bias": ("attn", "k", "bias"),
    "attn_v.bias": ("attn", "v", "bias"),
    "attn_output.weight": ("attn", "o", "kernel"),
    "ffn_norm.weight": ("mlp_norm", "scale"),
    "ffn_gate.weight": ("mlp", "gate", "kernel"),
    "ffn_up.weight": ("mlp", "up", "kernel"),
    "ffn_down.weight": ("mlp", "down", "kernel"),
    # Gemma 3
    "attn_q_norm.weight": ("attn", "q_norm", "scale"),
    "attn_k_norm.weight": ("attn", "k_norm", "scale"),
    "post_attention_norm.weight": ("attn_post_norm", "scale"),
    "post_ffw_norm.weight": ("mlp_post_norm", "scale"),
}
_TOP_NAMES = {
    "token_embd.weight": ("embed", "embedding"),
    "output_norm.weight": ("final_norm", "scale"),
    "output.weight": ("lm_head", "kernel"),
}


def param_path(gguf_name: str) -> tuple[str, ...] | None:
    """Maps a GGUF tensor name to its path in our params tree (None if unused, e.g. rope)."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return (f"layers_{int(parts[1])}",) + _LAYER_NAMES[parts[2]]
    return None


def unflatten(flat: dict[str, Any]) -> dict:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Inverse of `unflatten`."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def convert_gguf(reader, meta, out: Path | None = None):
    """Dequantizes all tensors to float32 and maps them to flat param names.

    Args:
      reader, meta: the opened GGUF (:func:`open_gguf`).
      out: write the tensors to this safetensors file instead, one at a time (the
        converted cache: peak memory is one tensor, not the model), with the cache's
        metadata (format, config, per-tensor checksums).

    Returns:
      (config, {'layers_0/attn/q/kernel': [D, H*E] float32, ...}), or (config, None) with
      ``out``; Dense kernels are stored (in, out), i.e. transposed from GGUF's (out, in).
    """
    names = {t.name for t in reader.tensors}
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise ModelFileError("GGUF file has no token_embd.weight tensor")
    config = families.from_gguf_metadata(meta, names, int(embed.shape[-1]))
    kept = [(t, param_path(t.name)) for t in reader.tensors if param_path(t.name) is not None]
    expected = expected_param_names(config)
    missing = sorted(expected - {"/".join(path) for _, path in kept})
    if missing:
        raise ModelFileError(f"GGUF file lacks tensors for {missing[:5]} ({len(missing)} missing)")

    def tensors():
        import gguf

        for t, path in kept:
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
            if path[-1] == "kernel":
                w = np.ascontiguousarray(w.T)
            if path[-1] == "scale" and config.norm == "rms_plus_one":
                w = w - np.float32(1.0)  # stored as 1 + w (llama.cpp's Gemma convention)
            yield "/".join(path), w

    if out is None:
        return config, dict(tensors())
    _write_safetensors(out, kept, tensors(), config)
    return config, None


_SUM_DIGITS = 20  # a checksum < 2**64 in fixed width, so the header's size is known first


def _write_safetensors(out: Path, kept, tensors, config) -> None:
    """Writes ``tensors`` (name, float32 array), in order, as one safetensors file whose
    header is written first with fixed-width checksum placeholders, then filled in."""
    shapes = {}
    for t, path in kept:
        shape = [int(x) for x in reversed(t.shape)]  # GGUF lists dims innermost first
        if path[-1] == "kernel":
            shape = shape[::-1]
        shapes["/".join(path)] = shape

    def header(sums: dict) -> bytes:
        entries, offset = {}, 0
        for name, shape in shapes.items():
            size = 4 * int(np.prod(shape, dtype=np.int64))
            entries[name] = {
                "dtype": "F32",
                "shape": shape,
                "data_offsets": [offset, offset + size],
            }
            offset += size
        meta = {"format": CACHE_FORMAT, "config": config.to_json(), "sums": json.dumps(sums)}
        text = json.dumps({"__metadata__": meta} | entries, separators=(",", ":")).encode()
        return text + b" " * (-len(text) % 8)

    placeholder = {name: "0" * _SUM_DIGITS for name in shapes}
    size = len(header(placeholder))
    sums = {}
    with open(out, "wb") as f:
        f.write(size.to_bytes(8, "little") + header(placeholder))
        for name, w in tensors:
            if list(w.shape) != shapes[name]:
                raise ModelFileError(f"tensor {name}: shape {list(w.shape)}, header {shapes[name]}")
            sums[name] = str(checksum(w)).zfill(_SUM_DIGITS)
            f.write(memoryview(np.ascontiguousarray(w)).cast("B"))
        final = header(sums)
        assert len(final) == size, "the checksums changed the header's size"
        f.seek(8)
        f.write(final)


def expected_param_names(config: config_lib.ModelConfig) -> set[str]:
    """Flat names of every parameter the decoder needs for `config` (one per layer, as in
    checkpoints), read from the decoder's abstract initialisation."""
    config = config.replace(scan_layers=False)
    shapes = jax.eval_shape(lambda key: decoder.init_params(config, key), jax.random.key(0))
    return set(flatten(shapes))


def load_gguf(
    path: str | os.PathLike, dtype: str | None = None, use_cache: bool = True, opened=None,
    scan_layers: bool = False, leaf=None,
) -> tuple[config_lib.ModelConfig, dict]:  # fmt: skip
    """Loads a GGUF checkpoint as (config, params), converting once and caching on disk.

    Args:
      path: the .gguf file.
      dtype: 'float32' (default) or 'bfloat16'; params are cast to it.
      use_cache: read/write the converted float32 cache under `cache_root()/converted`.
      opened: `open_gguf(path)`'s result if the caller already has it (used on a miss).
      scan_layers: `ModelConfig.scan_layers` (params stacked over layers) or not.
      leaf: optional ``(flat name, float32 array, dtype) -> {flat name: array}`` applied
        to each tensor as it is read from the cache (e.g. storing it tiled), so that the
        float params never exist all at once; not with ``scan_layers``.

    Returns:
      (ModelConfig, nested params dict of jax arrays).

    Raises:
      ModelFileError: missing, truncated or incomplete file.
      UnknownArchitectureError: not llama/qwen2/gemma3.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"GGUF file not found: {path}")
    # A cache hit needs no parsing: the cache is keyed by the sha256 of this exact file,
    # which was fully read and validated when the cache was written.
    cached = converted_path(path) if use_cache else None
    config = cached_config(path) if use_cache else None
    if config is not None:
        config = config.replace(dtype=dtype or config.dtype, scan_layers=scan_layers)
        params = _read_cache(cached, config.dtype, scan_layers, leaf)
        if params is not None:
            return config, params
    reader, meta = opened or open_gguf(path)
    if cached is None:
        config, flat = convert_gguf(reader, meta)
        config = config.replace(dtype=dtype or config.dtype, scan_layers=scan_layers)
        return config, build_params(list(flat), flat.pop, config.dtype, scan_layers)
    # Re-hash the file being converted (the memo keyed by size and mtime could hold the
    # digest of an earlier, good file) and store the conversion under its true digest.
    cached = converted_path(path, known=sha256_file(path))
    cached.parent.mkdir(parents=True, exist_ok=True)
    remove_conversions(cached.name.split("-")[0])  # by older code, or damaged
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    config, _ = convert_gguf(reader, meta, out=tmp)  # tensor by tensor, onto disk
    tmp.replace(cached)
    config = config.replace(dtype=dtype or config.dtype, scan_layers=scan_layers)
    params = _read_cache(cached, config.dtype, scan_layers, leaf)
    if params is None:
        raise ModelFileError(f"{cached}: the conversion just written does not read back")
    return config, params


def remove_conversions(digest: str) -> list[Path]:
    """Deletes every cached conversion (params, tokenizer) of the GGUF with sha256 `digest`,
    whatever code version made it; returns the removed paths."""
    removed = []
    for f in (cache_root() / "converted").glob(f"{digest}*"):
        f.unlink(missing_ok=True)
        removed.append(f)
    return removed


def converted_path(
    path: str | os.PathLike, suffix: str = ".safetensors", known: str | None = None
) -> Path:
    """Cache file for the GGUF at `path`: <cache>/converted/<sha256 of the file>-<code
    version><suffix> (`known`: a digest just computed, memoised as is)."""
    digest = cached_sha256(Path(path), known=known)
    return cache_root() / "converted" / f"{digest}-{CODE_VERSION}{suffix}"


def cached_config(path: str | os.PathLike) -> config_lib.ModelConfig | None:
    """The config stored with the converted cache of `path`, without reading weights."""
    from safetensors import safe_open

    cached = converted_path(path)
    if not cached.is_file():
        return None
    try:
        with safe_open(str(cached), "np") as f:
            info = f.metadata() or {}
        if info.get("format") == CACHE_FORMAT:
            return config_lib.ModelConfig.from_json(info["config"])
    except Exception:  # unreadable cache: treat as absent
        return None
    return None


def _read_cache(cached: Path, dtype: str, stack_layers: bool, leaf=None):
    """Params read tensor by tensor from a converted cache file (None if unusable).

    Each tensor is read with ``readinto`` into its own buffer, not through a memory map: a
    map's pages count in the process's resident memory until unmapped, so mapping a 7 GB
    cache while building 7 GB of params would double the peak.
    """
    try:
        with open(cached, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
            meta = header.pop("__metadata__", {})
            sums, start = json.loads(meta["sums"]), 8 + size

            def get(name):
                entry = header[name]
                if entry["dtype"] != "F32":
                    raise ValueError(f"{cached}: tensor {name} is {entry['dtype']}, not F32")
                lo, hi = entry["data_offsets"]
                w = np.empty(entry["shape"], np.float32)
                f.seek(start + lo)
                if f.readinto(memoryview(w).cast("B")) != hi - lo:
                    raise ValueError(f"{cached}: tensor {name} is cut short")
                if checksum(w) != int(sums[name]):
                    raise ValueError(f"{cached}: tensor {name} fails its checksum")
                return w

            return build_params(list(header), get, dtype, stack_layers, leaf)
    except (OSError, ValueError, KeyError) as e:
        print(f"rebuilding the converted cache ({e})", file=sys.stderr)
        return None  # unreadable or damaged cache: the caller rebuilds it


_PER_LAYER = re.compile(r"layers_(\d+)/(.+)")


def build_params(
    names: Iterable[str], get: Callable[[str], np.ndarray], dtype: str, stack_layers: bool,
    leaf: Callable | None = None,
) -> dict:  # fmt: skip
    """Nested jax params from flat checkpoint tensors, one tensor at a time.

    Args:
      names: flat names of the tensors to take, per layer (`layers_3/attn/q/kernel`).
      get: name -> numpy array, called once per name.
      dtype: dtype of the params.
      stack_layers: stack each kind of per-layer tensor into `layers/attn/q/kernel`
        [L, ...] (the layout of `ModelConfig.scan_layers`). Each stacked array is filled in
        place layer by layer, so reading lazily (a file) the peak memory stays near the
        params' size plus one tensor; popping from an in-memory dict it can reach one
        stacked kind more (its per-layer arrays are released only as they are copied).
      leaf: ``(name, array, dtype) -> {name: array}`` for each tensor (unstacked only);
        default: the array in ``dtype``.
    """
    dt = jnp.dtype(dtype)
    if leaf is not None and stack_layers:
        raise ValueError("a per-tensor conversion needs unstacked layers")
    out, kinds = {}, {}
    for name in names:
        match = _PER_LAYER.fullmatch(name)
        if leaf is not None:
            out.update(leaf(name, get(name), dt))
        elif match is None or not stack_layers:
            out[name] = jnp.asarray(get(name), dt)
        else:
            kinds.setdefault(match[2], {})[int(match[1])] = name
    for rest, by_layer in kinds.items():
        if sorted(by_layer) != list(range(len(by_layer))):
            raise ModelFileError(f"{rest}: layers {sorted(by_layer)} are not 0..L-1")
        stacked = None
        for i in range(len(by_layer)):
            w = get(by_layer[i])
            if stacked is None:  # allocated once the per-layer shape is known
                stacked = jnp.zeros((len(by_layer), *w.shape), dt)
            stacked = _put_layer(stacked, i, w)
        out[f"{decoder.LAYERS}/{rest}"] = stacked
    return unflatten(out)


@functools.partial(jax.jit, donate_argnums=0)
def _put_layer(stacked, i, w):
    """stacked [L, ...] (donated: written in place) with row i set to w (cast)."""
    return jax.lax.dynamic_update_index_in_dim(stacked, w.astype(stacked.dtype), i, 0)


def per_layer_tensors(params: dict) -> dict[str, np.ndarray]:
    """Flat numpy tensors named as in checkpoints (`layers_3/...`), from either layout."""
    out = {}
    for name, w in flatten(params).items():
        head, _, rest = name.partition("/")
        if head == decoder.LAYERS:
            out.update((f"layers_{i}/{rest}", x) for i, x in enumerate(np.asarray(w)))
        else:
            out[name] = np.asarray(w)
    return out


def cast_params(params: dict, dtype: str) -> dict:
    """Casts every leaf to `dtype` (bfloat16 via ml_dtypes through jax.numpy)."""
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.dtype(dtype)), params)
