"""requirements.txt and setup.cfg declare the same runtime dependencies."""

from __future__ import annotations

import configparser
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_requirements_match_install_requires():
    reqs = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    install = [x.strip() for x in cfg["options"]["install_requires"].splitlines() if x.strip()]
    assert sorted(reqs) == sorted(install)
