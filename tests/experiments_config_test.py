"""Config plumbing and the toy demo job (the README's main command until issue 5 lands)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import toy_demo
from experiments.configs import common
from experiments.configs import toy_demo as toy_demo_config


def test_overrides_are_typed_and_config_is_locked():
    config = toy_demo_config.get_config("vocab=4,rounds=10,alpha=0.25")
    assert config.vocab == 4 and config.rounds == 10 and config.alpha == 0.25
    with pytest.raises(AttributeError):
        config.new_key = 1  # locked: no new keys


@pytest.mark.parametrize(
    "arg,msg",
    [
        ("vocab=4,nope=1", "unknown config key 'nope'"),
        ("vocab=four", "expects int"),
        ("vocab", "key=value"),
    ],
)
def test_bad_overrides_are_clear_errors(arg, msg):
    with pytest.raises(ValueError, match=msg):
        toy_demo_config.get_config(arg)


def test_bool_overrides():
    cfg = common.build({"flag": False}, "flag=true")
    assert cfg.flag is True
    with pytest.raises(ValueError, match="bool"):
        common.build({"flag": False}, "flag=maybe")


def test_toy_demo_runs_and_is_lossless_at_noise_level():
    config = toy_demo_config.get_config("rounds=4000,methods=sd:2+rsd_s:2x2+spectr:2x2")
    rows = toy_demo.run(config)
    assert [r["method"] for r in rows] == ["AR", "SD", "RSD-S", "SpecTr"]
    for r in rows[1:]:
        assert 1.0 <= r["eta"] <= 3.0  # at most L + 1 tokens per call
        # 4000 rounds over 6 ids: TV noise is ~0.02; a lossy method would be far off.
        assert r["tv_first"] < 0.05
        assert np.all(np.diff(r["accept_by_depth"]) <= 0)
    assert "block efficiency" in toy_demo.format_table(rows, 4000)
