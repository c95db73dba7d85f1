"""Executes notebooks/quickstart.ipynb's code cells on CPU so the notebook cannot rot.

The cells run in order in one namespace (what a kernel does), from the repository root,
without Jupyter: shell (``!``) and magic (``%``) lines are not allowed in code cells.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def _code_cells():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_has_no_shell_or_magic_lines():
    for src in _code_cells():
        for line in src.splitlines():
            assert not line.lstrip().startswith(("!", "%")), line


def test_notebook_executes(monkeypatch, capsys):
    monkeypatch.chdir(NOTEBOOK.parent)
    namespace = {"__name__": "__main__"}
    for i, src in enumerate(_code_cells()):
        exec(compile(src, f"{NOTEBOOK.name}[code cell {i}]", "exec"), namespace)
    out = capsys.readouterr().out
    assert "greedy outputs identical" in out
    assert "| RSD-S |" in out
    assert namespace["RUN_REAL"] is False  # the real-model cell stays off in CI
    assert namespace["RUN_DISTILL"] is False
    assert os.path.isfile(os.path.join(namespace["workdir"], "summary.json"))
