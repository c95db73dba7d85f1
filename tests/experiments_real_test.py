"""Opt-in: the speculative job on the real Qwen2.5-Coder pair and the real datasets.

Slow (minutes on 2 cores, ~14 GB RAM peak), so it runs only with
``RSD_JAX_REAL_EXPERIMENTS=1`` and when both presets and the datasets are in the cache
(``python -m models.prepare qwen2.5-coder-0.5b qwen2.5-coder-1.5b``,
``python -m experiments.datasets fetch``). At T=0 every method must reproduce AR's output
token for token through the whole experiment path (datasets, chat template, runner).
"""

from __future__ import annotations

import os

import pytest

from experiments import datasets, runner
from experiments.configs import default

pytestmark = pytest.mark.slow


def _ready() -> bool:
    if os.environ.get("RSD_JAX_REAL_EXPERIMENTS") != "1":
        return False
    try:
        from models import presets

        for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
            if not presets.preset_path(name).is_file():
                return False
        for source in datasets.SOURCES:
            datasets.locate(source)
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _ready(), reason="set RSD_JAX_REAL_EXPERIMENTS=1 with models and data")
def test_real_pair_greedy_methods_equal_ar(tmp_path):
    config = default.get_config(
        "method=ar+sd:2+spectr:2x2+rsd_c:2-2+rsd_s:3x2,dataset=humaneval+chat,num_prompts=2,"
        "max_new_tokens=8,sampling=fixed,temperature=0,progress=false,bootstrap=50"
    )
    summary = runner.run(config, tmp_path, log=lambda message: None)
    for label, entry in summary["methods"].items():
        assert entry["matches_ar"] == 1.0, label
        assert entry["block_efficiency"] >= 1.0
    assert (tmp_path / "table.md").is_file()
