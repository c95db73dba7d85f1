"""Method plans of the three configs: shapes per sweep point, budgets realised, clear errors."""

from __future__ import annotations

import pytest

from experiments.configs import default, fixed_budget, fixed_length
from experiments.speculative import plan, settings
from rsd_jax import methods


def _plan(config):
    """The plan of a config, through its checked settings (as the job gets it)."""
    return plan.plan(settings.from_config(config))


def test_default_has_every_method_of_the_paper_with_ar_first():
    specs = _plan(default.get_config())
    assert [s.name for s in specs] == ["AR", "SD", "MRS", "SpecTr", "RSD-C", "RSD-S"]
    assert [(s.length, s.budget) for s in specs[1:]] == [(5, 5), (3, 6), (3, 6), (4, 8), (4, 8)]


def test_fixed_length_shapes():
    specs = _plan(fixed_length.get_config())
    assert specs[0].text == "ar"
    for length in (2, 3, 4, 5):
        at = {s.name: s for s in specs if s.sweep_value == length}
        assert set(at) == {"SD", "MRS", "SpecTr", "RSD-C", "RSD-S"}
        assert all(s.length == length for s in at.values())
        assert at["SD"].budget == length
        assert {at[n].budget for n in ("MRS", "SpecTr", "RSD-C", "RSD-S")} == {3 * length}


def test_every_default_budget_shape_realises_its_budget():
    for budget, shapes in plan.BUDGET_SHAPES.items():
        for name, shape in shapes.items():
            assert methods.parse(f"{name}:{shape}").budget == budget, (name, shape)


def test_fixed_budget_shapes_and_sd_cap():
    specs = _plan(fixed_budget.get_config())
    for budget in (6, 10, 14, 21, 30):
        at = {s.name: s for s in specs if s.sweep_value == budget}
        assert set(at) == {"SD", "MRS", "SpecTr", "RSD-C", "RSD-S"}
        for name in ("MRS", "SpecTr", "RSD-C", "RSD-S"):
            assert at[name].budget == budget
        assert at["SD"].length == min(budget, 8)
        assert ("capped" in at["SD"].note) == (budget > 8)
    table = plan.describe(specs)
    assert "beam W=6 L=5 (B=30)" in table and "branching 2-2-2-2 (B=30, L=4)" in table


def test_shape_overrides():
    cfg = fixed_budget.get_config("budgets=21,method=rsd_c+rsd_s,shape_overrides=21@rsd_c:7-2")
    assert [s.text for s in _plan(cfg)] == ["ar", "rsd_c:7-2", "rsd_s:7x3"]
    with pytest.raises(ValueError, match="B@name:shape"):
        _plan(fixed_budget.get_config("shape_overrides=21-rsd_c:7-2"))
    with pytest.raises(ValueError, match="budgets are"):
        _plan(fixed_budget.get_config("budgets=6,shape_overrides=21@rsd_c:7-2"))


def test_errors():
    with pytest.raises(ValueError, match="'sweep' must be one of 'none', 'length', 'budget'"):
        _plan(default.get_config("sweep=sideways"))
    with pytest.raises(ValueError, match="bare method names"):
        _plan(fixed_length.get_config("method=sd:3"))
    with pytest.raises(ValueError, match="'budgets' must be '.'-separated distinct integers"):
        _plan(fixed_budget.get_config("budgets=six"))
    with pytest.raises(ValueError, match="names no method"):
        _plan(default.get_config("method=+"))
    with pytest.raises(ValueError, match="needs sweep=budget"):
        _plan(fixed_length.get_config("auto_shape=true"))
    with pytest.raises(ValueError, match="'calibration_tokens' must be an integer >= 1"):
        _plan(fixed_budget.get_config("auto_shape=true,calibration_tokens=0"))
    with pytest.raises(ValueError, match="'calibration_prompts' must be an integer >= 1"):
        _plan(fixed_budget.get_config("auto_shape=true,calibration_prompts=0"))
