"""rsd_jax.metrics against values computed by hand."""

from __future__ import annotations

import pytest

from rsd_jax import metrics


@pytest.mark.parametrize(
    "generated, calls, eta",
    [
        (30, 10, 3.0),  # 3 tokens per target call
        (7, 4, 1.75),
        (12, 12, 1.0),  # AR: one token per call
        (1, 3, 1 / 3),  # fewer tokens than calls (a run cut short): below 1 is allowed
    ],
)
def test_block_efficiency_is_tokens_per_target_call(generated, calls, eta):
    assert metrics.block_efficiency(generated, calls) == pytest.approx(eta, rel=1e-15)


@pytest.mark.parametrize("calls", [0, -1])
def test_block_efficiency_needs_a_target_call(calls):
    with pytest.raises(ValueError, match="at least one target call"):
        metrics.block_efficiency(5, calls)


@pytest.mark.parametrize(
    "eta, r, length, expected",
    [
        (3.0, 0.1, 4, 3.0 / 1.4),  # 1 + 0.1 * 4 = 1.4
        (2.5, 0.05, 2, 2.5 / 1.1),
        (2.0, 0.0, 5, 2.0),  # a free draft: MBSU is the block efficiency
        (2.0, 0.5, 0, 2.0),  # no draft call (AR): nothing to pay
        (1.0, 1.0, 1, 0.5),  # a draft as large as the target, one call: half speed
    ],
)
def test_mbsu_divides_by_the_draft_cost_of_a_round(eta, r, length, expected):
    assert metrics.mbsu(eta, r, length) == pytest.approx(expected, rel=1e-15)


def test_mbsu_falls_with_each_draft_call_and_with_the_draft_size():
    assert metrics.mbsu(2.4, 0.2, 3) < metrics.mbsu(2.4, 0.2, 2) < metrics.mbsu(2.4, 0.2, 1) < 2.4
    assert metrics.mbsu(2.4, 0.3, 2) < metrics.mbsu(2.4, 0.2, 2)


@pytest.mark.parametrize("r, length", [(-0.1, 2), (0.1, -1)])
def test_mbsu_rejects_negative_costs(r, length):
    with pytest.raises(ValueError, match="non-negative"):
        metrics.mbsu(2.0, r, length)
