"""The README and docs/ stay true to the code: entry points run, links resolve, API is current.

Fast: no model is loaded; each entry point is only asked for its usage.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from experiments.tools import api_docs

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_MAIN = re.compile(r'^if __name__ == "__main__":', re.M)


def _readme_entry_points() -> list[str]:
    """Modules named in the README's table of ``python -m`` entry points, in table order."""
    text = README.read_text()
    head = text.index("## Entry points")
    table = text[head : text.index("\n## ", head + 1)]
    return re.findall(r"^\| `python -m ([\w.]+)", table, re.M)


def _modules_with_main() -> set[str]:
    found = set()
    for package in ("experiments", "models"):
        for path in (ROOT / package).rglob("*.py"):
            if _MAIN.search(path.read_text()):
                parts = path.relative_to(ROOT).with_suffix("").parts
                found.add(".".join(parts[:-1] if parts[-1] == "__main__" else parts))
    return found


def _source(module: str) -> str:
    """The code ``python -m module`` runs (a package runs its ``__main__.py``)."""
    path = ROOT / pathlib.Path(*module.split("."))
    return (path / "__main__.py" if path.is_dir() else path.with_suffix(".py")).read_text()


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: pathlib.Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_readme_table_lists_every_entry_point():
    listed = _readme_entry_points()
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == _modules_with_main(), (
        "the README's entry-point table and the modules with a __main__ block differ"
    )


def _run_module(module: str, flag: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, flag], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("module", _readme_entry_points())
def test_entry_point_answers_help(module):
    run = _run_module(module, "--help")
    source = _source(module)
    out = run.stdout + run.stderr
    if "app.run(" in source:
        # absl prints the usage and its flags, then exits 1 by design; --only_check_args
        # parses the flags and exits 0 without running the job.
        assert run.returncode in (0, 1) and "Try --helpfull" in out, out
        check = _run_module(module, "--only_check_args")
        assert check.returncode == 0, check.stdout + check.stderr
    else:
        assert run.returncode == 0 and "usage:" in out, out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: links that resolve to nothing: {broken}"


def test_readme_python_example_runs(capsys):
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip()


def test_api_reference_is_up_to_date():
    assert api_docs.OUTPUT.read_text() == api_docs.render(), (
        "docs/api.md is stale: run python -m experiments.tools.api_docs"
    )


def test_api_reference_covers_every_core_module():
    core = {f"rsd_jax.{p.stem}" for p in (ROOT / "rsd_jax").glob("*.py") if p.stem != "__init__"}
    missing = sorted(core - set(api_docs.MODULES))
    assert not missing, f"add to experiments/tools/api_docs.py MODULES: {missing}"


def test_no_reference_to_files_outside_the_repository():
    pattern = re.compile(r"\b(ALGORITHMS|MODELS|DESIGN)" + r"\.md\b")  # split: not a hit itself
    files = [README, ROOT / "setup.cfg", ROOT / "pyproject.toml", ROOT / ".ci" / "run"]
    for folder in ("rsd_jax", "models", "experiments", "tests", "docs", "notebooks"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".ipynb")]
    hits = [
        f"{path.relative_to(ROOT)}: {m.group(0)}"
        for path in files
        for m in pattern.finditer(path.read_text())
    ]
    assert not hits, hits
