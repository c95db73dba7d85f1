"""The speculative job end to end on toy n-gram models through the real engine and runner.

Same code path as real runs (plan -> engine -> JSONL records -> summary, table, plots);
only the model and prompt sources are injected (``experiments.speculative.sources.toy_sources``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.common import records as records_lib
from experiments.configs import default, fixed_budget, fixed_length
from experiments.speculative import job as runner
from experiments.speculative import settings as spec_settings
from experiments.speculative import sources, timed
from experiments.speculative import workdir as workdir_lib
from tests.experiments_strict_json_test import strict_loads


def run_job(config, workdir, **kw):
    """The speculative job on a config (checked into settings first, as experiments.run does)."""
    return runner.run(spec_settings.from_config(config), workdir, **kw)


METHODS = "ar+sd:2+spectr:2x2+rsd_s:2x2"
BASE = f"method={METHODS},dataset=humaneval+summarise,num_prompts=4,max_new_tokens=8"
BASE += ",progress=false,bootstrap=50"
ROOT = Path(__file__).resolve().parents[1]


def _run(workdir, arg=BASE, config_module=default, **kw):
    model_source, prompt_source = sources.toy_sources()
    config = config_module.get_config(arg)
    logs = []
    summary = run_job(
        config,
        workdir,
        model_source=model_source,
        prompt_source=prompt_source,
        log=logs.append,
        **kw,
    )
    return summary, logs


def _strip(records: dict) -> dict:
    return {
        k: {f: v for f, v in r.items() if f not in (*timed.TIMING_FIELDS, "invocation")}
        for k, r in records.items()
    }


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    summary, logs = _run(workdir)
    return workdir, summary, logs


def test_outputs_records_summary_table_and_plots(full_run):
    workdir, summary, logs = full_run
    records = records_lib.load_records(workdir / workdir_lib.RESULTS)
    assert len(records) == 4 * 4  # (2 prompts x 2 datasets) x 4 methods
    for name in ("summary.json", "table.md", "shapes.md", "config.json"):
        assert (workdir / name).is_file()
    for png in (
        "block_efficiency_vs_L.png",
        "block_efficiency_vs_budget.png",
        "token_rate_ratio_vs_budget.png",
    ):
        assert (workdir / png).read_bytes()[:4] == b"\x89PNG"
    stored = strict_loads((workdir / "summary.json").read_text())
    strict_loads((workdir / "config.json").read_text())
    for line in (workdir / workdir_lib.RESULTS).read_text().splitlines():
        strict_loads(line)
    assert set(stored["methods"]) == {"ar", "sd:2", "spectr:2x2", "rsd_s:2x2"}
    for label, e in stored["methods"].items():
        for key in ("block_efficiency", "mbsu", "token_rate", "token_rate_ratio_vs_ar"):
            assert e[key] is not None and e[key] > 0, (label, key)
        lo, hi = e["block_efficiency_ci"]
        assert lo <= e["block_efficiency"] <= hi
        assert 1.0 <= e["block_efficiency"] <= e["length"] + 1
        assert len(e["acceptance_by_depth"]) == e["length"]
        assert e["target_tokens_per_call"] == pytest.approx(e["budget"] + 1)
        assert e["mbsu"] == pytest.approx(e["block_efficiency"] / (1 + 0.25 * e["length"]))
        assert e["quality"]["summarise"]["metric"] == "rouge2_f1"
    assert stored["methods"]["ar"]["token_rate_ratio_vs_ar"] == pytest.approx(1.0)
    assert "| RSD-S |" in (workdir / "table.md").read_text()
    assert any("| RSD-S |" in line for line in logs)


def test_resume_after_interrupt_equals_uninterrupted_and_recomputes_nothing(full_run, tmp_path):
    ref_dir, _, _ = full_run
    reference = records_lib.load_records(ref_dir / workdir_lib.RESULTS)

    class Interrupt(Exception):
        pass

    seen = []

    def stop_after_five(record):
        seen.append(record["key"])
        if len(seen) == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(tmp_path, on_record=stop_after_five)
    assert len(records_lib.load_records(tmp_path / workdir_lib.RESULTS)) == 5
    with open(tmp_path / workdir_lib.RESULTS, "a") as f:  # a kill mid-write leaves a partial line
        f.write('{"key": "humaneval/s0-0|sd:2", "tok')

    resumed = []
    _run(tmp_path, on_record=lambda r: resumed.append(r["key"]))
    # Nothing finished is recomputed, except AR on the prompt that was cut short: it is
    # timed again beside that prompt's other methods, so their ratios pair one invocation.
    cut = seen[-1].split("|")[0]
    assert seen[-1] == f"{cut}|ar"
    assert set(resumed) & set(seen) == {seen[-1]}
    assert len(resumed) == len(reference) - 5 + 1
    lines = (tmp_path / workdir_lib.RESULTS).read_text().splitlines()
    assert len(lines) == len(reference) + 1  # AR's record of that prompt, replaced
    records = records_lib.load_records(tmp_path / workdir_lib.RESULTS)
    assert _strip(records) == _strip(reference)
    on_cut = {r["invocation"] for k, r in records.items() if k.startswith(f"{cut}|")}
    assert len(on_cut) == 1
    first = {
        r["invocation"]
        for k, r in records.items()
        if k.split("|")[0] in {x.split("|")[0] for x in seen[:4]}
    }
    assert first.isdisjoint(on_cut)

    again = []
    _run(tmp_path, on_record=lambda r: again.append(r))
    assert again == []  # a finished workdir only re-summarises


def test_incompatible_workdir_is_refused(full_run, tmp_path):
    _run(tmp_path, BASE.replace("num_prompts=4", "num_prompts=2"))
    with pytest.raises(workdir_lib.IncompatibleWorkdirError, match="max_new_tokens: 8 -> 9"):
        _run(tmp_path, BASE.replace("max_new_tokens=8", "max_new_tokens=9"))
    with pytest.raises(workdir_lib.IncompatibleWorkdirError, match="temperature"):
        _run(tmp_path, BASE + ",sampling=fixed,temperature=0.5")

    def never(config):
        raise AssertionError("an incompatible workdir is refused before loading models")

    with pytest.raises(workdir_lib.IncompatibleWorkdirError, match="seed"):
        run_job(default.get_config(BASE + ",seed=3"), tmp_path, model_source=never)
    model_source, prompt_source = sources.toy_sources(vocab=6)  # other models, same config
    with pytest.raises(workdir_lib.IncompatibleWorkdirError, match="models differ"):
        run_job(default.get_config(BASE), tmp_path, model_source=model_source, log=len)
    # More prompts or other methods are compatible: only the new work runs.
    new = []
    _run(tmp_path, on_record=lambda r: new.append(r["prompt"]))
    assert sorted(set(new)) == ["humaneval/s0-1", "summarise/s0-1"]


def test_workdir_of_the_former_paper_sentinel_resumes_under_sampling_paper(tmp_path):
    """A config.json written before the ``sampling`` key (temperature = top_p = -1 for the
    paper's setting) holds the records ``sampling=paper`` makes: it resumes, nothing reruns."""
    arg = BASE.replace("num_prompts=4", "num_prompts=2")
    _run(tmp_path, arg)
    path = tmp_path / workdir_lib.CONFIG
    stored = json.loads(path.read_text())
    del stored["config"]["sampling"]
    stored["config"] |= {"temperature": -1.0, "top_p": -1.0}
    path.write_text(json.dumps(stored))
    again = []
    _run(tmp_path, arg, on_record=again.append)
    assert again == []
    stored["config"]["temperature"] = 0.5  # T fixed, the paper's top-p: refused, named
    path.write_text(json.dumps(stored))
    with pytest.raises(workdir_lib.IncompatibleWorkdirError, match=r"of humaneval: \(0.5, 0.95\)"):
        _run(tmp_path, arg)


def test_greedy_methods_reproduce_ar(tmp_path):
    summary, _ = _run(tmp_path, BASE + ",sampling=fixed,temperature=0")
    for label, e in summary["methods"].items():
        assert e["matches_ar"] == 1.0, label


@pytest.mark.parametrize(
    "module,arg,msg",
    [
        (default, "method=ar+nope:2", "bad method"),
        (default, "method=ar+rsd_s", "needs a shape"),
        (fixed_budget, "budgets=6,shape_overrides=6@rsd_s:2x2", "not the budget 6"),
        (fixed_budget, "budgets=6+10,method=rsd_s:4x4", "none of the budgets"),
        (fixed_budget, "budgets=7,method=rsd_c", "no default rsd_c shape"),
        (fixed_budget, "budgets=6,method=sd:5", "none of the budgets"),
        (fixed_budget, "budgets=6,shape_overrides=6@sd:4", "does not fit budget"),
        (fixed_length, "method=foo", "unknown method 'foo'"),
        (default, "dataset=xsum", "unknown dataset 'xsum'"),
        (default, "auto_shape=true", "needs sweep=budget"),
        (fixed_budget, "auto_shape=best", "'auto_shape' expects a bool"),
        (fixed_budget, "auto_rate=true", "auto_rate .* needs auto_shape=true"),
        (fixed_budget, "method=mrs/tv", "only sd, rsd_c and rsd_s take /tv"),
    ],
)
def test_bad_configs_fail_before_loading_models(module, arg, msg, tmp_path):
    def never(config):
        raise AssertionError("models must not be loaded for a bad config")

    with pytest.raises(ValueError, match=msg):
        run_job(module.get_config(arg), tmp_path, model_source=never, log=lambda m: None)


def test_fixed_budget_sweep_runs_and_lists_shapes(tmp_path):
    arg = "budgets=6+10,method=sd+rsd_s+rsd_c,sd_max_length=6,dataset=humaneval,num_prompts=1"
    summary, logs = _run(tmp_path, arg + ",max_new_tokens=6,progress=false,bootstrap=20",
                         fixed_budget)  # fmt: skip
    shapes = (tmp_path / "shapes.md").read_text()
    assert "SD capped at L=6 (B=6 < 10)" in shapes and "beam W=5 L=2 (B=10)" in shapes
    assert "branching 2-2-1 (B=10, L=3)" in shapes
    labels = set(summary["methods"])
    assert {"B=6 sd:6", "B=10 sd:6", "B=6 rsd_s:3x2", "B=10 rsd_s:5x2"} <= labels
    records = records_lib.load_records(tmp_path / workdir_lib.RESULTS)
    assert sum(r["method"] == "sd:6" for r in records.values()) == 1  # one chain serves both B
    assert "Shapes used" in logs[0]


def test_auto_shapes_are_calibrated_run_and_reported(tmp_path):
    """auto_shape: calibration on unevaluated prompts, one auto RSD-C shape per budget."""
    arg = "budgets=6+10,method=rsd_c,dataset=humaneval,num_prompts=2,max_new_tokens=8"
    arg += ",auto_shape=true,calibration_prompts=1,calibration_shape=3-2,calibration_tokens=8"
    arg += ",progress=false,bootstrap=20"
    summary, logs = _run(tmp_path, arg, fixed_budget)
    calib = strict_loads((tmp_path / workdir_lib.CALIBRATION).read_text())  # unmeasured: null
    evaluated = {
        m["prompt"] for m in records_lib.load_records(tmp_path / workdir_lib.RESULTS).values()
    }
    assert not set(calib["settings"]["prompts"]) & evaluated  # calibration prompts not scored
    count = calib["table"]["count"]
    assert count[0][2] > 0 and count[1][1] > 0  # root ranks 1..3, depth-1 ranks 1..2 measured
    auto = [e for label, e in summary["methods"].items() if " auto " in label]
    assert sorted(e["budget"] for e in auto) == [6, 10]
    assert all("auto_shape (predicted block efficiency" in e["note"] for e in auto)
    assert "auto_shape" in (tmp_path / "shapes.md").read_text()
    assert calib["settings"]["max_new"] == 8  # calibration_tokens, not max_new_tokens
    comparison = summary["auto_vs_hand_picked"]
    assert [c["budget"] for c in comparison] == [6, 10]
    for c in comparison:
        rivals = [e for e in summary["methods"].values() if e["sweep_value"] == c["budget"]]
        best = max(e["block_efficiency"] for e in rivals if " auto " not in e["label"])
        assert c["best_block_efficiency"] == pytest.approx(best)
        assert c["ratio"] == pytest.approx(c["auto_block_efficiency"] / best)
    assert "auto / best" in (tmp_path / workdir_lib.TABLE).read_text()
    # A rerun reuses the calibration and recomputes nothing.
    _, logs2 = _run(tmp_path, arg, fixed_budget)
    assert any("calibration reused" in m for m in logs2)
    assert any("0 to run" in m for m in logs2)
    # More evaluated prompts keep the calibration (its prompts are drawn apart) ...
    _, logs3 = _run(tmp_path, arg.replace("num_prompts=2", "num_prompts=3"), fixed_budget)
    assert any("calibration reused" in m for m in logs3)
    # ... but a different calibration length recalibrates.
    _, logs4 = _run(tmp_path, arg + ",calibration_tokens=6", fixed_budget)
    assert not any("calibration reused" in m for m in logs4)
    assert json.loads((tmp_path / workdir_lib.CALIBRATION).read_text())["settings"]["max_new"] == 6


def test_auto_rate_times_both_models_and_adds_a_shape_per_budget(tmp_path):
    """auto_rate: forward costs timed once (costs.json, reused), one rate-ranked RSD-C
    shape per budget, compared with the best hand-picked shape like auto_shape's, and
    the cost model's finalists raced on the calibration prompts (race.json, reused): the
    fastest of them is run too."""
    arg = "budgets=6+10,method=rsd_c,dataset=humaneval,num_prompts=1,max_new_tokens=8"
    arg += ",auto_shape=true,auto_rate=true,calibration_prompts=1,calibration_shape=3-2"
    arg += ",calibration_tokens=8,progress=false,bootstrap=20"
    summary, logs = _run(tmp_path, arg, fixed_budget)
    costs = json.loads((tmp_path / "costs.json").read_text())
    assert costs["widths"][0] == [1, 7, 11]  # the target at 1 and at each B + 1
    assert all(s > 0 for s in costs["curves"]["target"].values())
    labels = summary["methods"]
    rate = [e for label, e in labels.items() if " auto rate " in label and "raced" not in label]
    assert sorted(e["budget"] for e in rate) == [6, 10]
    assert all("x AR from the measured forward costs" in e["note"] for e in rate)
    compared = {c["auto"] for c in summary["auto_vs_hand_picked"]}
    assert {e["label"] for e in rate} <= compared
    stored = json.loads((tmp_path / workdir_lib.RACE).read_text())
    raced = stored["settings"]["methods"]
    assert 4 <= len(raced) <= 5 and any(set(t[6:].split("-")) == {"1"} for t in raced)
    assert (
        stored["settings"]["prompts"]
        == json.loads((tmp_path / workdir_lib.CALIBRATION).read_text())["settings"]["prompts"]
    )  # raced on the calibration prompts, never the evaluated
    assert all(r > 0 for r in stored["rates"].values())
    best = max(raced, key=lambda t: stored["rates"][t])
    won = [e for label, e in labels.items() if " auto rate raced " in label]
    assert [e["text"] for e in won] == [best] and won[0]["budget"] <= 10
    assert any(f"fastest {best}" in m for m in logs)
    _, logs2 = _run(tmp_path, arg, fixed_budget)
    assert any("forward costs reused" in m for m in logs2)
    assert any("race reused" in m for m in logs2) and any("0 to run" in m for m in logs2)


def test_probes_report_walk_and_traversal_on_the_same_trees(tmp_path):
    arg = "method=ar+rsd_c:2-2+rsd_c:2-2/tv+spectr:2x2,dataset=humaneval,num_prompts=2"
    summary, _ = _run(tmp_path, arg + ",max_new_tokens=8,probes=true,progress=false,bootstrap=20")
    m = summary["methods"]
    for label in ("rsd_c:2-2", "rsd_c:2-2/tv"):
        assert m[label]["expected_eta_walk"] > 1 and m[label]["expected_eta_traversal"] > 1
        assert m[label]["traversal_gain"] > 0
    assert "expected_eta_traversal" not in m["spectr:2x2"]  # i.i.d. trees: walk only
    assert "expected_eta_walk" in m["spectr:2x2"] and "expected_eta_walk" not in m["ar"]
    assert "exact E[tokens/call], traversal" in (tmp_path / "table.md").read_text()


def _never(config):
    raise AssertionError("this workdir must be refused before loading models")


def test_second_lock_on_a_workdir_fails_fast_and_is_released_on_exit(tmp_path):
    with records_lib.workdir_lock(tmp_path):
        with pytest.raises(
            records_lib.WorkdirBusyError, match=rf"pid {os.getpid()}, lock .*\.lock"
        ):
            with records_lib.workdir_lock(tmp_path):
                pass
        with pytest.raises(records_lib.WorkdirBusyError, match="in use by another run"):
            run_job(default.get_config(BASE), tmp_path, model_source=_never, log=len)
    with records_lib.workdir_lock(tmp_path):  # released on exit
        pass

    class Boom(Exception):
        pass

    def boom(config):
        raise Boom

    with pytest.raises(Boom):  # a run that fails releases the lock as well
        run_job(default.get_config(BASE), tmp_path, model_source=boom, log=len)
    with records_lib.workdir_lock(tmp_path):
        pass


def test_a_concurrent_run_in_another_process_is_refused_until_it_dies(tmp_path):
    script = (
        "import sys\nfrom pathlib import Path\nfrom experiments.common import records\n"
        "with records.workdir_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True)\n    sys.stdin.readline()\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(records_lib.WorkdirBusyError, match=rf"pid {child.pid}\b"):
            run_job(default.get_config(BASE), tmp_path, model_source=_never, log=len)
    finally:
        child.kill()  # killed, not a clean exit: the kernel drops the lock
        child.wait()
    with records_lib.workdir_lock(tmp_path):
        pass


@pytest.mark.parametrize(
    "damage,problem",
    [(b'{"key": "x", "tok\n', "Unterminated string"), (b"[1, 2]\n", "no record key"),
     (b"\xff\xfe\n", "utf-8")],
)  # fmt: skip
def test_damaged_line_inside_results_names_file_and_line(full_run, tmp_path, damage, problem):
    ref_dir, _, _ = full_run
    lines = (ref_dir / workdir_lib.RESULTS).read_bytes().splitlines(keepends=True)
    path = tmp_path / workdir_lib.RESULTS
    path.write_bytes(b"".join(lines[:2]) + b"\n" + damage + b"".join(lines[2:4]) + b'{"key"')
    (tmp_path / workdir_lib.CONFIG).write_bytes((ref_dir / workdir_lib.CONFIG).read_bytes())
    with pytest.raises(
        records_lib.DamagedResultsError, match=rf"results\.jsonl, line 4: .*{problem}"
    ):
        records_lib.load_records(path)
    with pytest.raises(records_lib.DamagedResultsError, match=rf"{path}, line 4: damaged"):
        run_job(default.get_config(BASE), tmp_path, model_source=_never, log=len)
    assert path.read_bytes().endswith(b'{"key"')  # nothing is cut from a damaged file
    path.write_bytes(b"".join(lines[:4]) + b'{"key"')  # only a partial last line: dropped
    assert len(records_lib.load_records(path)) == 4
    assert path.read_bytes() == b"".join(lines[:4])
