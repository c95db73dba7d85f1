"""The speculative job on the real Qwen2.5-Coder pair and the real datasets (slow).

At T=0 every method must reproduce AR's output token for token through the whole
experiment path (datasets, chat template, draft vocabulary, runner, summary).

It runs with the other slow tests (``pytest -m slow``), in CI too: ``.ci/run`` prepares
both presets and fetches the datasets for its main-job smoke before the tests. Its cost,
read from the code (not timed on its own): both models load (float32, ~14 GB RAM peak,
the same as the main-job smoke), five methods compile once each for the 1.5B target, then
2 prompts x 8 tokens x 5 methods decode (seconds); a few minutes on 2 cores, dominated by
compilation. Without the presets or the data in the cache it is skipped, saying what to
run (``python -m models.prepare qwen2.5-coder-0.5b qwen2.5-coder-1.5b``,
``python -m experiments.data fetch``); in CI (``CI=true``) that is a failure instead.
"""

from __future__ import annotations

import os

import pytest

from experiments.configs import default
from experiments.data import datasets
from experiments.speculative import job as runner
from experiments.speculative import settings as spec_settings
from models.loading import presets


def run_job(config, workdir, **kw):
    """The speculative job on a config (checked into settings first, as experiments.run does)."""
    return runner.run(spec_settings.from_config(config), workdir, **kw)


pytestmark = pytest.mark.slow
PAIR = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def _missing() -> str | None:
    """What the test needs that is not in the cache, with the command that fetches it."""
    absent = [name for name in PAIR if not presets.preset_path(name).is_file()]
    if absent:
        return f"presets {absent} not prepared (python -m models.prepare {' '.join(PAIR)})"
    for source in datasets.SOURCES:
        try:
            datasets.locate(source)
        except Exception as e:  # absent or damaged: either way, fetch again
            return f"dataset {source} unavailable ({e}; python -m experiments.data fetch)"
    return None


def test_real_pair_greedy_methods_equal_ar(tmp_path):
    missing = _missing()
    if missing and os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"{missing}: .ci/run prepares them before the tests")
    if missing:
        pytest.skip(missing)
    config = default.get_config(
        "method=ar+sd:2+spectr:2x2+rsd_c:2-2+rsd_s:3x2,dataset=humaneval+chat,num_prompts=2,"
        "max_new_tokens=8,sampling=fixed,temperature=0,progress=false,bootstrap=50"
    )
    summary = run_job(config, tmp_path, log=lambda message: None)
    for label, entry in summary["methods"].items():
        assert entry["matches_ar"] == 1.0, label
        assert entry["block_efficiency"] >= 1.0
    assert (tmp_path / "table.md").is_file()
