"""The paper's report (experiments/paper): metrics, paired verdicts, wall-clock pairing,
projection and the whole report, on synthetic workdirs whose answers are known."""

from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import common
from experiments.paper import findings, load, report, wallclock
from experiments.paper import measures as ms
from experiments.paper.regimes import REGIMES, Regime
from experiments.speculative import shape_search

TASKS = ("chat", "humaneval")


def _rec(prompt, method, name, inv, calls, tokens, seconds, probe=None):
    task = prompt.split("/")[0]
    return dict(
        key=f"{prompt}|{method}",
        prompt=prompt,
        dataset=task,
        method=method,
        name=name,
        temperature=1.0,
        top_p=0.95,
        invocation=inv,
        generated=tokens,
        num_tokens=32,
        target_calls=calls,
        seconds=seconds,
        accepted_hist=[0] * 3,
        text="x",
        expected_tokens_walk=probe,
        rank_accept=[[0.5, 0.7]],
        rank_count=[[1, 1]],
    )


def _workdir(tmp_path, rows, sweep="budget"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = dict(common.speculative(None, sweep=sweep, dataset="+".join(TASKS)))
    models = dict(draft="d", target="t", draft_params=10, target_params=100)
    (tmp_path / "config.json").write_text(json.dumps(dict(config=config, models=models)))
    with open(tmp_path / "results.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return load.read(tmp_path, "toy draft")


def _prompts(task, n=8):
    return [f"{task}/{i}" for i in range(n)]


def test_read_keeps_the_newest_record_and_every_invocations_ar(tmp_path):
    p = "chat/0"
    wd = _workdir(
        tmp_path,
        [
            _rec(p, "ar", "AR", "i1", 32, 32, 10.0),
            _rec(p, "sd:6", "SD", "i1", 8, 32, 4.0, 30.0),
            _rec(p, "ar", "AR", "i2", 32, 32, 20.0),
            _rec(p, "sd:6", "SD", "i2", 10, 32, 8.0, 31.0),
        ],
    )
    assert wd.r == pytest.approx(0.1)
    assert wd.tasks == {"chat": [p]}
    assert wd.record(p, "sd:6")["invocation"] == "i2"
    assert wd.ar_of(wd.record(p, "sd:6"))["seconds"] == 20.0


def test_point_metrics_and_rate_paired_with_the_ar_of_its_own_invocation(tmp_path):
    rows = []
    for i, p in enumerate(_prompts("chat", 4)):
        # AR timed twice: its own run (10 s) and a slower later run (40 s) for another method
        rows += [
            _rec(p, "ar", "AR", "a", 32, 32, 10.0),
            _rec(p, "sd:6", "SD", "a", 10, 40, 5.0, 30.0 + i),
        ]
        rows += [_rec(p, "ar", "AR", "b", 32, 32, 40.0)]
    wd = _workdir(tmp_path, rows)
    spec = next(s for s in load.specs(wd, "budget") if s.text == "sd:6")
    pt = ms.point(wd, spec, "chat")
    assert pt.n == 4 and pt.eta == pytest.approx(4.0)
    assert pt.eta_probe == pytest.approx((30 + 31 + 32 + 33) / 40)
    assert pt.eta_best == pt.eta_probe
    assert pt.mbsu == pytest.approx(pt.eta_probe / (1 + 0.1 * 6))
    # paired with invocation 'a' (10 s): 2x AR; the later AR (40 s) would have given 8x
    assert pt.rate_ratio == pytest.approx(2.0)


def _two_methods(tmp_path, gap, n=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in _prompts("chat", n):
        base = rng.uniform(2.0, 4.0)  # prompts differ a lot; the pairing must absorb it
        rows.append(_rec(p, "ar", "AR", "a", 32, 32, 10.0))
        for text, name, eta in (("rsd_s:3x2", "RSD-S", base * gap), ("sd:6", "SD", base)):
            noisy = eta * rng.uniform(0.98, 1.02)
            rows.append(_rec(p, text, name, "a", 10, int(10 * noisy), 5.0, 10 * noisy))
    return _workdir(tmp_path, rows)


def test_paired_verdict_resolves_a_gap_and_calls_equal_methods_a_tie(tmp_path):
    ahead = ms.compare_eta(_two_methods(tmp_path / "a", 1.05), "rsd_s:3x2", "sd:6", "chat")
    assert ahead.verdict == ">" and ahead.ci[0] > 1.0
    behind = ms.compare_eta(_two_methods(tmp_path / "b", 0.95), "rsd_s:3x2", "sd:6", "chat")
    assert behind.verdict == "<"
    # negative control: the same law for both methods must not be called a win
    same = ms.compare_eta(_two_methods(tmp_path / "c", 1.0), "rsd_s:3x2", "sd:6", "chat")
    assert same.verdict == "tie" and same.ci[0] < 1.0 < same.ci[1]


def test_unpaired_intervals_would_not_resolve_the_same_gap(tmp_path):
    """Why pairing: per-method intervals over prompts overlap for a 5% gap."""
    wd = _two_methods(tmp_path, 1.05)
    a, b = (
        ms.point(wd, s, "chat") for s in load.specs(wd, "budget") if s.text in ("rsd_s:3x2", "sd:6")
    )
    assert max(a.eta_best_ci[0], b.eta_best_ci[0]) < min(a.eta_best_ci[1], b.eta_best_ci[1])


def test_too_few_prompts_give_no_verdict(tmp_path):
    wd = _two_methods(tmp_path, 1.5, n=3)
    assert ms.compare_eta(wd, "rsd_s:3x2", "sd:6", "chat").verdict == "few"


def test_rate_comparison_divides_each_method_by_its_own_ar(tmp_path):
    rows = []
    for p in _prompts("chat", 6):
        rows += [_rec(p, "ar", "AR", "a", 32, 32, 10.0), _rec(p, "sd:6", "SD", "a", 8, 32, 5.0)]
        # a slower machine phase: AR 20 s and the tree 8 s in invocation b
        rows += [
            _rec(p, "ar", "AR", "b", 32, 32, 20.0),
            _rec(p, "rsd_s:3x2", "RSD-S", "b", 8, 32, 8.0),
        ]
    wd = _workdir(tmp_path, rows)
    c = ms.compare_rate(wd, "rsd_s:3x2", "sd:6", "chat")
    assert c.ratio == pytest.approx((20 / 8) / (10 / 5))  # 1.25, not 5/8 from raw seconds
    assert c.verdict == ">"


@pytest.mark.parametrize(
    "verdicts, expected",
    [
        ([">", ">", "tie"], "reproduced"),
        ([">", "tie", "tie", "tie"], "mixed"),
        ([">", "<", ">"], "mixed"),
        (["<", "<", ">"], "contradicted"),
        (["tie", "tie", "few"], "tie"),
        (["few"], "too few prompts"),
    ],
)
def test_tally_rules(verdicts, expected):
    assert findings.tally(verdicts) == expected


def test_forward_curve_interpolates_and_extends():
    curve = {1: 6.0, 8: 5.0, 64: 12.0}
    assert wallclock.forward_ms(curve, 1) == 6.0
    assert wallclock.forward_ms(curve, 4.5) == pytest.approx(5.5)
    assert wallclock.forward_ms(curve, 120) == pytest.approx(12.0 + 7 / 56 * 56)


def test_projected_speedup_by_hand():
    curve = {1: 10.0, 64: 10.0}
    assert wallclock.projected_speedup(1.0, 0, 0, curve, 0.1) == 1.0
    # SD L=4: 4 draft calls at 0.1 x 10 ms + one 10 ms target call; eta 3 -> 3 * 10 / 14
    assert wallclock.projected_speedup(3.0, 4, 4, curve, 0.1) == pytest.approx(30 / 14)


def test_quality_gap_against_given_references(tmp_path):
    pytest.importorskip("rouge_score")
    rows = []
    refs = {}
    for p in _prompts("summarise", 4):
        refs[p] = "the cat sat on the mat today"
        ar = _rec(p, "ar", "AR", "a", 32, 32, 1.0) | dict(text="the cat sat on the mat today")
        sd = _rec(p, "sd:6", "SD", "a", 8, 32, 1.0) | dict(text="a dog ran in a park")
        rows += [ar, sd]
    wd = _workdir(tmp_path, rows)
    q = ms.quality_gap(wd, "sd:6", "summarise", refs)
    assert q["metric"] == "rouge2_f1" and q["diff"] == pytest.approx(-1.0) and q["n"] == 4


def test_report_writes_findings_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(1)
    rows = []
    wd_path = tmp_path / "0.5b"
    wd_path.mkdir()
    config = dict(common.speculative(None, sweep="budget", dataset="+".join(TASKS)))
    specs = load.specs(load.Workdir(wd_path, "x", config, 0.1, {}, {}, {}), "budget")
    for task in TASKS:
        for p in _prompts(task, 5):
            rows.append(_rec(p, "ar", "AR", "a", 32, 32, 10.0))
            for s in dict((s.text, s) for s in specs).values():
                eta = 2 + s.budget / 10 + rng.uniform(0, 0.2)
                rows.append(_rec(p, s.text, s.name, "a", 10, int(10 * eta), 6.0, 10 * eta))
    _workdir(wd_path, rows)
    path = report.write(tmp_path, [Regime("0.5b", "toy draft", "x")], tmp_path / "out")
    text = path.read_text()
    assert "Finding 2" in text and "Finding 3" in text and "toy draft" in text
    assert (tmp_path / "out" / "fixed_budget_toy_draft.png").stat().st_size > 1000
    assert "RSD-S ahead of every rival" in text


def test_stage_table_shares_wall_time_with_the_stages_own_invocation(tmp_path):
    wd_path = tmp_path / "0.5b"
    start = 1_800_000_000.0
    inv = f"{int(start * 1e9):x}"
    later = f"{int((start + 500) * 1e9):x}"  # another stage's run
    rows = [
        _rec("chat/0", "ar", "AR", inv, 32, 32, 30.0),
        _rec("chat/0", "sd:6", "SD", inv, 8, 32, 10.0),
    ]
    rows += [_rec("chat/0", "sd:8", "SD", later, 8, 32, 99.0)]
    wd = _workdir(wd_path, rows)
    finished = datetime.datetime.fromtimestamp(start + 100).isoformat(timespec="seconds")
    (tmp_path / "stages.jsonl").write_text(
        json.dumps(
            dict(regime="0.5b", stage="budget", num_prompts=1, seconds=100.0, finished=finished)
        )
        + "\n"
    )
    lines = report._stage_times(tmp_path, {"0.5b": wd})
    assert lines[-1].startswith("| 0.5b | budget | 1 | 100 | 40 (40%) |")


def test_run_dry_run_lists_stages_and_skips_finished_ones(tmp_path):
    (tmp_path / "stages.jsonl").write_text(
        json.dumps(dict(regime="0.5b", stage="budget", num_prompts=8, seconds=1, finished="x"))
        + "\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "experiments.paper",
        "run",
        f"--root={tmp_path}",
        "--regimes=0.5b",
        "--prompts=8+16",
        "--dry_run",
    ]
    kw = dict(capture_output=True, text=True, check=True)
    out = subprocess.run(cmd, **kw).stdout
    stages = [line.split(":")[0] for line in out.splitlines() if line.startswith("==")]
    assert stages == [
        "== 0.5b lossless (0 prompts)",
        "== 0.5b length (8 prompts)",
        "== 0.5b table (8 prompts)",
        "== 0.5b auto (8 prompts)",
        "== 0.5b budget (16 prompts)",
        "== 0.5b length (16 prompts)",
        "== 0.5b table (16 prompts)",
        "== 0.5b auto (16 prompts)",
    ]
    # by default: the 0.5B and the paper-regime draft (trained first), at 8 then 16 prompts
    plain = subprocess.run([*cmd[:4], f"--root={tmp_path}", "--dry_run"], **kw).stdout
    heads = [line.split(" (")[0] for line in plain.splitlines() if line.startswith("==")]
    assert heads[0] == "== 0.5b lossless" and heads[8] == "== pruned distill"
    assert [h.split()[1] for h in heads] == ["0.5b"] * 8 + ["pruned"] * 10
    budgets = [h for h in plain.splitlines() if " budget (" in h]
    assert [b.split(":")[0] for b in budgets] == [  # the 0.5B's 8 are finished
        "== 0.5b budget (16 prompts)",
        "== pruned budget (8 prompts)",
        "== pruned budget (16 prompts)",
    ]
    bad = subprocess.run([*cmd[:-2], "--prompts=16+8", "--dry_run"], capture_output=True, text=True)
    assert bad.returncode != 0 and "increasing" in bad.stderr


def test_report_auto_section_compares_with_the_best_hand_picked(tmp_path):
    pytest.importorskip("matplotlib")
    wd_path = tmp_path / "0.5b"
    wd_path.mkdir()
    table = {"accept": [[0.6, 0.75, 0.8], [0.5, 0.7, None]], "count": [[5, 5, 5], [4, 4, 0]]}
    (wd_path / "calibration.json").write_text(json.dumps({"settings": {}, "table": table}))
    curves = {
        "target": {"1": 1.0, "7": 1.1, "11": 1.3, "15": 1.5, "22": 1.9, "31": 2.4},
        "draft": {"1": 0.2, "2": 0.2, "4": 0.25, "8": 0.3, "16": 0.4},
    }
    (wd_path / "costs.json").write_text(json.dumps({"widths": [], "curves": curves}))
    config = dict(common.speculative(None, sweep="budget", dataset="chat"))
    bare = load.Workdir(wd_path, "x", config, 0.1, {}, {}, {})
    auto = load.specs(bare, "auto")
    assert {s.label.split()[1] for s in auto} == {"auto"} and len(auto) == 10
    # the race's winner joins the auto shapes, once, at its own budget
    rates = {"rsd_c:3-1": 1.0, "rsd_c:1-1": 1.2, "rsd_c:2-2": 0.9}
    race = {"settings": {}, "rates": rates}
    (wd_path / "race.json").write_text(json.dumps(race))
    auto = load.specs(bare, "auto")
    assert [s.label for s in auto if "raced" in s.label] == ["B=2 auto rate raced rsd_c:1-1"]
    assert len(auto) == 11
    specs = {s.text: s for p in ("budget", "auto") for s in load.specs(bare, p)}
    rows = []
    for p in _prompts("chat", 6):
        rows.append(_rec(p, "ar", "AR", "a", 32, 32, 10.0))
        for s in specs.values():
            eta = 2.5 + 0.1 * s.budget / 6
            rows.append(_rec(p, s.text, s.name, "a", 10, int(10 * eta), 5.0, 10 * eta))
    _workdir(wd_path, rows)
    text = report.write(tmp_path, [Regime("0.5b", "toy draft", "x")], tmp_path / "out").read_text()
    assert "auto_shape and auto_rate against the hand-picked shapes" in text
    assert "auto rate shape (predicted x AR)" in text
    rows = [x for x in text.splitlines() if "raced)" in x]
    assert len(rows) == 1 and rows[0].startswith("| chat | branching 1-1 (B=2, L=2) (")


def test_trees_are_compared_with_the_fastest_chain_of_any_perspective(tmp_path):
    rows = []
    for p in _prompts("chat", 6):
        rows.append(_rec(p, "ar", "AR", "a", 32, 32, 12.0))
        rows.append(_rec(p, "sd:6", "SD", "a", 8, 32, 8.0))  # 1.5x AR
        rows.append(_rec(p, "sd:3", "SD", "a", 8, 32, 6.0))  # 2.0x AR: a fixed-length chain
        rows.append(_rec(p, "rsd_s:3x2", "RSD-S", "a", 8, 32, 5.0))  # 2.4x AR
        rows.append(_rec(p, "spectr:2x2", "SpecTr", "a", 8, 32, 4.0))  # 3x AR: a Table shape
    wd = _workdir(tmp_path, rows)
    budget = ms.points(wd, "budget")
    lines, wins = wallclock.trees_vs_chain(wd, budget, budget + ms.points(wd, "length"))
    row = next(x for x in lines if x.startswith("| chat | 6 |"))
    assert "SD L=3 (2.00)" in row and "1.200 [1.200, 1.200] >" in row
    assert wins == ["chat, B=6: RSD-S beam W=3 L=2 (B=6)"]
    assert not any("other perspectives" in x for x in lines)
    # trees of the other perspectives (here the Table's SpecTr 2x2, B = 4) get a row too
    table = ms.points(wd, "table")
    # an RSD-C branching of all ones is a chain: never the tree of that row, however fast
    table.append(dataclasses.replace(table[0], text="rsd_c:1-1-1", name="RSD-C", rate_ratio=4.0))
    chains = budget + ms.points(wd, "length")
    lines, wins = wallclock.trees_vs_chain(wd, budget, chains, table)
    row = next(x for x in lines if "other perspectives" in x)
    assert row.startswith("| chat | 4 (other perspectives) | SpecTr") and "1.500" in row
    assert wins[-1] == "chat, B=4: SpecTr iid 2x2 (B=4, L=2)"
    # only the fixed-budget chain: the tree is 1.6x it
    lines, _ = wallclock.trees_vs_chain(wd, budget)
    assert "1.600" in next(x for x in lines if x.startswith("| chat | 6 |"))


def test_model_check_divides_the_measured_rate_by_the_cost_models(tmp_path):
    rows = []
    for task in TASKS:
        for p in _prompts(task, 4):
            rows.append(_rec(p, "ar", "AR", "a", 32, 32, 10.0))
            rows.append(_rec(p, "sd:6", "SD", "a", 8, 32, 5.0, 24.0))  # eta 3, 2x AR
    wd = _workdir(tmp_path, rows)
    costs = shape_search.CostCurves(target={1: 1.0, 7: 1.0}, draft={1: 0.1})
    lines = wallclock.model_check(ms.points(wd, "budget"), costs)
    # predicted: eta 3 * 1 / (6 * 0.1 + 1) = 1.875; measured 2.0
    assert lines[2] == "| SD chain L=6 (B=6) | 1.88 | 2.00 | 1.07 |"
    assert len([x for x in lines if x.startswith("| SD")]) == 1  # one row per method text


def test_sign_flip_p_is_exact_and_cannot_reject_with_four_prompts():
    assert ms.sign_flip_p([1.0, 1.0, 1.0, 1.0]) == pytest.approx(2 / 16)  # the smallest p
    assert ms.sign_flip_p([1.0, -1.0, 1.0, -1.0]) == 1.0
    # 10 prompts, all ahead: only the all-plus and all-minus assignments are as extreme
    assert ms.sign_flip_p([0.5 + 0.1 * i for i in range(10)]) == pytest.approx(2 / 1024)
    # negative control: centred noise is not flagged
    rng = np.random.default_rng(0)
    assert ms.sign_flip_p(rng.normal(0, 1, 12)) > 0.05


def test_lossless_section_reports_each_methods_greedy_agreement(tmp_path):
    wd = tmp_path / "distilled"
    wd.mkdir()
    assert "not run" in report._lossless(wd)[0]
    (tmp_path / "distilled_lossless").mkdir()
    methods = {
        "AR": {"block_efficiency": 1.0},
        "SD L=5": {"block_efficiency": 2.5, "matches_ar": 1.0},
        "RSD-S 6x5": {"block_efficiency": 3.25, "matches_ar": 0.875},
    }
    summary = {"config": {"num_prompts": 8, "max_new_tokens": 64}, "methods": methods}
    (tmp_path / "distilled_lossless" / "summary.json").write_text(json.dumps(summary))
    rows = [line for line in report._lossless(wd) if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["| SD L=5 | 2.50 | 1.00 |", "| RSD-S 6x5 | 3.25 | 0.88 |"]


def test_lossless_stage_runs_every_method_greedy_on_the_regimes_draft(tmp_path):
    from experiments.configs import default
    from experiments.paper import __main__ as driver
    from experiments.speculative import settings

    argv = driver.lossless_command(driver.REGIMES["distilled"], tmp_path)
    config = argv[3].split(":", 1)[1]
    s = settings.from_config(default.get_config(config))
    assert s.sampling.temperature == 0 and s.models.draft == str(tmp_path / "distill/draft")
    kinds = {m.split(":")[0] for m in s.sweep.methods}
    assert kinds == {"ar", "sd", "mrs", "spectr", "rsd_c", "rsd_s"}
    assert argv[4] == f"--workdir={tmp_path / 'distilled_lossless'}"


def test_draft_section_reads_the_distil_stages_summary(tmp_path):
    regime = REGIMES["pruned"]
    assert report._draft(tmp_path, regime) == []
    (tmp_path / "pruned_distill").mkdir()
    summary = {
        "draft_params": 120e6,
        "target_params": 1.54e9,
        "cost": {"draft_seconds": 0.012, "target_seconds": 0.2, "r": 0.06},
        "heldout_before": {"heldout_kl": 9.9, "heldout_agree": 0.002},
        "heldout_after": {"heldout_kl": 1.5, "heldout_agree": 0.5},
        "teacher_seconds": 1200.0,
        "train_seconds": 3000.0,
        "train_tokens_per_s": 210.0,
        "config": {"corpus": "mix", "keep_layers": "0+1+23", "init_from": "qwen2.5-coder-0.5b"},
    }
    (tmp_path / "pruned_distill" / "summary.json").write_text(json.dumps(summary))
    text = "\n".join(report._draft(tmp_path, regime))
    assert "distill_paper_pruned.py" in text and "blocks 0+1+23 of qwen2.5-coder-0.5b" in text
    assert report._draft(tmp_path, REGIMES["0.5b"]) == []  # a preset draft has no section
    assert "r = 0.060" in text and "120.0M parameters" in text
    assert "KL to the target 9.90 -> 1.50" in text and "0.002 -> 0.500" in text


def test_each_distilled_regime_runs_its_own_distil_stage_first(tmp_path):
    from experiments.paper import __main__ as driver

    cmd = [sys.executable, "-m", "experiments.paper", "run", f"--root={tmp_path}"]
    out = subprocess.run(
        [*cmd, "--regimes=pruned+distilled", "--prompts=8", "--dry_run"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    heads = [line for line in out.splitlines() if line.startswith("== ")]
    assert [h.split(":")[0] for h in heads[:2]] == [
        "== pruned distill (0 prompts)",
        "== pruned lossless (0 prompts)",
    ]
    assert "distill_paper_pruned.py" in heads[0] and f"{tmp_path / 'pruned_distill'}" in heads[0]
    assert f"draft={tmp_path / 'pruned_distill' / 'draft'}" in heads[1]
    assert any(h.startswith("== distilled distill") and "distill_paper.py" in h for h in heads)
    # the two drafts train in separate workdirs; each config is a valid distillation
    from experiments.distill import settings as distill_settings

    dirs = set()
    for regime in driver.REGIMES.values():
        if regime.distill:
            module = regime.distill_config.removesuffix(".py").replace("/", ".")
            s = distill_settings.from_config(__import__(module, fromlist=["x"]).get_config())
            assert s.student.init == "prune" and max(s.student.keep_layers) < 24
            dirs.add(regime.distill_dir(tmp_path))
    assert len(dirs) == 2
