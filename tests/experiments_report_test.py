"""Report: auto_shape against the best hand-picked shape, paired over prompts."""

from __future__ import annotations

import pytest

from experiments.reporting import tables as report
from experiments.speculative import plan, summary


def _rec(generated, calls):
    return {"generated": generated, "target_calls": calls}


def _specs():
    return [
        plan._spec("ar"),
        plan._spec("sd:4", "B=6 sd:4", 6),
        plan._spec("rsd_c:2-2", "B=6 rsd_c:2-2", 6),
        plan._spec("rsd_c:1-1-1-1-1-1", "B=6 auto rsd_c:1-1-1-1-1-1", 6, plan.AUTO_NOTE + " (x)"),
        plan._spec("rsd_c:2-2-1", "B=10 rsd_c:2-2-1", 10),
    ]


def test_auto_is_compared_with_the_best_rival_at_its_budget():
    keys = ["p0", "p1", "p2"]
    per_method = {  # (generated, calls) per prompt
        "ar": [(10, 10)] * 3,
        "sd:4": [(30, 10), (20, 10), (40, 10)],  # eta 3.0: best at B=6
        "rsd_c:2-2": [(25, 10), (25, 10), (25, 10)],  # eta 2.5
        "rsd_c:1-1-1-1-1-1": [(33, 10), (22, 10), (44, 10)],  # eta 3.3
        "rsd_c:2-2-1": [(90, 10)] * 3,  # another budget: never the rival
    }
    records = {
        f"{k}|{t}": _rec(*v)
        for t, vals in per_method.items()
        for k, v in zip(keys, vals, strict=True)
    }
    (row,) = summary.auto_vs_hand_picked(_specs(), keys, records, samples=200)
    assert row["budget"] == 6 and row["best"] == "B=6 sd:4"
    assert row["auto_block_efficiency"] == pytest.approx(3.3)
    assert row["best_block_efficiency"] == pytest.approx(3.0)
    assert row["ratio"] == pytest.approx(1.1)
    # Paired: auto is 1.1x SD on every prompt, so every resample gives exactly 1.1.
    assert row["ratio_ci"] == pytest.approx([1.1, 1.1])
    table = report.format_auto_table({"auto_vs_hand_picked": [row]})
    assert "1.100 [1.100, 1.100]" in table and "SD chain L=4" in table


def test_a_missing_prompt_is_left_out_of_both_sides():
    keys = ["p0", "p1"]
    records = {
        "p0|sd:4": _rec(30, 10),
        "p0|rsd_c:2-2": _rec(20, 10),
        "p0|rsd_c:1-1-1-1-1-1": _rec(15, 10),
        "p1|sd:4": _rec(10, 10),  # p1 has no auto record: excluded from every side
        "p1|rsd_c:2-2": _rec(10, 10),
    }
    (row,) = summary.auto_vs_hand_picked(_specs(), keys, records, samples=50)
    assert row["num_prompts"] == 1 and row["ratio"] == pytest.approx(0.5)
    assert summary.auto_vs_hand_picked(_specs()[:3], keys, records, 50) == []  # no auto spec
