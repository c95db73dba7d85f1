"""Every JSON file the experiments write is standard JSON: no NaN / Infinity tokens."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import run
from experiments.common import strict_json
from experiments.configs import toy_demo as toy_demo_config
from experiments.speculative import shape_search
from experiments.toy_demo import job as toy_demo
from experiments.toy_demo import settings as toy_settings


def _reject(token):
    raise ValueError(f"non-standard JSON token {token}")


def strict_loads(text: str):
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` like strict parsers."""
    return json.loads(text, parse_constant=_reject)


def test_non_finite_floats_become_null_everywhere():
    obj = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": {"d": np.float64("nan")}}
    text = strict_json.dumps(obj)
    assert strict_loads(text) == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": None}}
    assert "NaN" not in text and "Infinity" not in text
    with pytest.raises(ValueError, match="non-standard JSON token NaN"):
        strict_loads(json.dumps(obj))  # the plain encoder writes a token strict parsers reject


def test_calibration_table_with_unmeasured_cells_round_trips():
    table = shape_search.calibration_table([[[3.0, 0.0]]], [[[4, 0]]])  # rank 2 never drafted
    assert np.isnan(table.accept[0, 1])
    text = shape_search.dumps(table)
    back = shape_search.AcceptanceTable.from_json(strict_loads(text))
    assert back.accept[0, 0] == 0.75 and np.isnan(back.accept[0, 1])
    np.testing.assert_array_equal(back.count, table.count)


def test_toy_demo_summary_is_standard_json(tmp_path):
    config = toy_demo_config.get_config("rounds=200,methods=sd:2")
    settings = toy_settings.from_config(config)
    rows = toy_demo.run(settings)
    assert math.isnan(rows[0]["tv_first"])  # AR has no TV: the value that used to be NaN
    path = run.save_toy_summary(str(tmp_path), settings, rows)
    with open(path) as f:
        stored = strict_loads(f.read())
    assert stored["rows"][0]["tv_first"] is None
    assert stored["rows"][1]["tv_first"] == pytest.approx(rows[1]["tv_first"])
