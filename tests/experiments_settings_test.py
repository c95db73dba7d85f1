"""Settings of the speculative job (experiments.speculative.settings): every bad setting fails in
one line before models load or files are written, every key reaches the typed settings,
and a workdir without results never blocks a corrected rerun."""

from __future__ import annotations

import json

import pytest

from experiments.common import records as records_lib
from experiments.common.checks import ConfigError
from experiments.configs import default, fixed_budget, fixed_length, verifiers
from experiments.speculative import job as runner
from experiments.speculative import settings as spec_settings
from experiments.speculative import sources
from experiments.speculative import workdir as workdir_lib


def run_job(config, workdir, **kw):
    """The speculative job on a config (checked into settings first, as experiments.run does)."""
    return runner.run(spec_settings.from_config(config), workdir, **kw)


BAD = [
    (default, "max_new_tokens=0", "'max_new_tokens' must be an integer >= 1, got 0"),
    (default, "seed=99999999999999999999",
     "'seed' must be an integer in [0, 4294967295], got 99999999999999999999"),
    (default, "seed=-1", "'seed' must be an integer in [0, 4294967295], got -1"),
    (default, "seed=4294967296", "'seed' must be an integer in [0, 4294967295], got 4294967296"),
    (default, "bootstrap=0", "'bootstrap' must be an integer >= 1, got 0"),
    (default, "max_prompt_tokens=-1", "'max_prompt_tokens' must be an integer >= 2, got -1"),
    (default, "max_prompt_tokens=1", "'max_prompt_tokens' must be an integer >= 2, got 1"),
    (default, "shakespeare_lines=0", "'shakespeare_lines' must be an integer >= 1, got 0"),
    (default, "num_prompts=0", "'num_prompts' must be an integer >= 1, got 0"),
    (default, "dataset=humaneval+humaneval",
     "'dataset' must be a '+'-separated list without repeats (repeated: humaneval)"),
    (default, "dataset=humaneval+xsum", "'dataset' must be '+'-separated names among "
     "humaneval, chat, summarise, translate, shakespeare (unknown dataset 'xsum'), "
     "got 'humaneval+xsum'"),
    (default, "method=ar+sd:2+sd:2",
     "'method' must be a '+'-separated list without repeats (repeated: sd:2)"),
    (fixed_length, "lengths=2+2",
     "'lengths' must be a '+'-separated list without repeats (repeated: 2)"),
    (fixed_length, "lengths=2+0", "'lengths' must be '+'-separated distinct integers >= 1"),
    (fixed_budget, "budgets=0", "'budgets' must be '+'-separated distinct integers >= 1, got '0'"),
    (fixed_budget, "budgets=6+six", "'budgets' must be '+'-separated distinct integers >= 1"),
    (fixed_budget, "budgets=6+06", "'budgets' must be '+'-separated distinct integers >= 1"),
    (fixed_budget, "budgets=6,shape_overrides=6@rsd_s:3x2+6@rsd_s:2x3",
     "'shape_overrides' must be at most one override per budget and method (B=6 rsd_s)"),
    (fixed_budget, "shape_overrides=6:rsd_s",
     "'shape_overrides' must be '+'-separated B@name:shape items"),
    (fixed_budget, "budgets=6,method=sd+sd:6",
     "'method' must run each method once per sweep point; B=6 sd:6 comes twice"),
    (default, "sampling=fixed,temperature=inf",
     "'temperature' must be a finite number >= 0 (0 = greedy), got inf"),
    (default, "sampling=fixed,temperature=nan",
     "'temperature' must be a finite number >= 0 (0 = greedy), got nan"),
    (default, "sampling=fixed,temperature=-0.5", "'temperature' must be a finite number >= 0"),
    (default, "sampling=fixed,top_p=0", "'top_p' must be in (0, 1] (1 = off), got 0.0"),
    (default, "sampling=fixed,top_p=nan", "'top_p' must be in (0, 1] (1 = off), got nan"),
    (default, "top_p=1.5", "'top_p' must be in (0, 1]"),
    (default, "sampling=greedy", "'sampling' must be 'paper' (the paper's per-dataset setting) "
     "or 'fixed' (temperature and top_p for every dataset), got 'greedy'"),
    # sampling=paper ignores temperature and top_p: setting one is an error, not a no-op
    (default, "temperature=0", "'temperature' must be left at 1.0 with sampling=paper, which "
     "takes the paper's per-dataset value; write sampling=fixed,temperature=0 to use it, "
     "got 0.0"),
    (default, "top_p=0.9", "'top_p' must be left at 1.0 with sampling=paper"),
    # the former sentinel of the paper's setting says what to write instead
    (default, "temperature=-1", "'temperature' must be a finite number >= 0 (0 = greedy); -1 "
     "no longer selects the paper's setting: write sampling=paper (the default) instead, "
     "got -1.0"),
    (verifiers, "top_p=-1", "-1 no longer selects the paper's setting: write sampling=paper"),
    (default, "chat_template=maybe",
     "'chat_template' must be one of 'auto', 'always', 'never', got 'maybe'"),
    (default, "dtype=float16",
     "'dtype' must be one of 'auto', 'float32', 'bfloat16', got 'float16'"),
    (default, "sweep=lengths", "'sweep' must be one of 'none', 'length', 'budget'"),
    (default, "target=", "'target' must be a preset name or a model path, got ''"),
    (fixed_budget, "calibration_shape=4x4", "'calibration_shape' must be an RSD-C branching"),
    (fixed_budget, "auto_draft_cost=-1", "'auto_draft_cost' must be a finite number >= 0"),
    (default, "mesh=2x1", "'batch' must be a multiple of the mesh's data axis 2"),
    (default, "mesh=0x2", "'mesh' must be '' (one device) or DxM with D, M >= 1"),
    (default, "mesh=lots", "'mesh' must be '' (one device) or DxM"),
    (default, "target_weights=int8", "'target_weights' must be one of 'auto', 'float', 'tiled'"),
    (default, "draft_weights=int4",
     "'draft_weights' must be one of 'auto', 'float', 'tiled', 'int8'"),
    (default, "target_weights=tiled,draft_weights=float,dtype=bfloat16",
     "'target_weights' must be 'float' with dtype='bfloat16' (tiles compute in float32)"),
    (default, "target_weights=float,draft_weights=int8,mesh=1x2",
     "'draft_weights' must be 'float' with a mesh"),
    (default, "method=ar+nope:2", "bad method 'nope:2'"),  # then methods and shapes
]  # fmt: skip


@pytest.mark.parametrize("module,arg,msg", BAD)
def test_bad_values_name_key_and_accepted_range(module, arg, msg):
    with pytest.raises(ConfigError) as e:
        spec_settings.from_config(module.get_config(arg))
    assert msg in str(e.value)
    assert "\n" not in str(e.value)


EARLY = ("max_new_tokens=0", "seed=99999999999999999999", "dataset=humaneval+humaneval",
         "budgets=0", "sampling=fixed,temperature=inf",
         "method=ar+sd:2+sd:2")  # fmt: skip


@pytest.mark.parametrize("module,arg,msg", [b for b in BAD if b[1] in EARLY])
def test_bad_configs_fail_before_loading_or_writing_anything(module, arg, msg, tmp_path):
    def never(config):
        raise AssertionError("models must not be loaded for a bad config")

    workdir = tmp_path / "new"
    with pytest.raises(ValueError, match="bad config"):
        run_job(module.get_config(arg), workdir, model_source=never, log=lambda m: None)
    assert not workdir.exists()


def test_all_bad_keys_are_reported_together_in_one_line():
    with pytest.raises(ConfigError) as e:
        spec_settings.from_config(default.get_config("max_new_tokens=0,seed=-1,top_p=2"))
    text = str(e.value)
    assert text.startswith("bad config: ") and "\n" not in text
    assert text.count("; ") == 2 and all(k in text for k in ("max_new_tokens", "seed", "top_p"))


@pytest.mark.parametrize(
    "module,arg",
    [
        (default, ""),
        (default, "sampling=paper"),
        (default, "sampling=fixed,temperature=0,top_p=1,seed=4294967295,max_prompt_tokens=2"),
        (fixed_length, ""),
        (fixed_budget, ""),
        (fixed_budget, "auto_shape=true"),
        (fixed_budget, "shape_overrides=6@rsd_s:3x2+10@rsd_s:5x2"),
        (verifiers, ""),
    ],
)
def test_shipped_configs_and_edge_values_are_valid(module, arg):
    spec_settings.from_config(module.get_config(arg))


ARG = "method=ar+sd:2,dataset=humaneval,num_prompts=1,max_new_tokens=4"
ARG += ",progress=false,plots=false,bootstrap=10"


def _run(workdir, arg=ARG, **kw):
    model_source, prompt_source = sources.toy_sources()
    kw.setdefault("prompt_source", prompt_source)
    logs = []
    run_job(default.get_config(arg), workdir, model_source=model_source, log=logs.append, **kw)
    return logs


@pytest.mark.parametrize("results", [None, "", "\n", '{"key": "humaneval/s0-0|ar", "tok'])
def test_config_without_results_is_replaced_not_refused(tmp_path, results):
    """A run that failed before its first record leaves config.json: a rerun with other
    result-affecting settings replaces it (and drops the calibration, forward costs and race
    made under it)."""

    class NoPrompts(Exception):
        pass

    def failing_prompts(config, bundle):
        raise NoPrompts

    with pytest.raises(NoPrompts):  # fails after config.json is written
        _run(tmp_path, ARG + ",seed=5", prompt_source=failing_prompts)
    assert json.loads((tmp_path / workdir_lib.CONFIG).read_text())["config"]["seed"] == 5
    if results is not None:
        (tmp_path / workdir_lib.RESULTS).write_text(results)
    made_under_it = (workdir_lib.CALIBRATION, workdir_lib.COSTS, workdir_lib.RACE)
    for name in made_under_it:
        (tmp_path / name).write_text("{}")
    logs = _run(tmp_path)  # seed 5 -> 0, max_new_tokens unchanged: not refused
    assert json.loads((tmp_path / workdir_lib.CONFIG).read_text())["config"]["seed"] == 0
    assert any("replaced: no results were made under it (seed: 5 -> 0)" in m for m in logs)
    assert not any((tmp_path / name).exists() for name in made_under_it)
    assert len(records_lib.load_records(tmp_path / workdir_lib.RESULTS)) == 2
    with pytest.raises(workdir_lib.IncompatibleWorkdirError, match="seed: 0 -> 5"):
        _run(tmp_path, ARG + ",seed=5")  # now it holds results: refused as before


# A valid value other than the default for every key of each job: changing any one key must
# change the typed settings (``recorded`` excluded from equality), so no key is dropped
# between the config and what the job reads.
SPECULATIVE_OTHER = dict(
    sweep="budget", method="ar+sd:3", target="other-target", draft="other-draft",
    draft_vocab=1000, target_weights="float", draft_weights="float", dtype="bfloat16",
    scan_layers=True, mesh="1x1", dataset="chat", num_prompts=7, max_new_tokens=5,
    max_prompt_tokens=64, batch=2, chat_template="never", shakespeare_lines=3, sampling="fixed",
    temperature=0.5, top_p=0.9, seed=11, lengths="2+3", width=2, budgets="6+10",
    sd_max_length=4, shape_overrides="6@rsd_s:2x3", auto_shape=True, calibration_prompts=2,
    calibration_tokens=9, calibration_shape="3-3", auto_max_depth=5, auto_draft_cost=0.2,
    auto_rate=True, probes=True, bootstrap=77, progress=False, plots=False,
)  # fmt: skip
# Keys whose other value is only valid together with another key's.
SPECULATIVE_WITH = {
    "auto_shape": "sweep=budget,method=sd+rsd_s",
    "auto_rate": "sweep=budget,method=sd+rsd_s,auto_shape=true",
    "temperature": "sampling=fixed",
    "top_p": "sampling=fixed",
    "dtype": "target_weights=float,draft_weights=float",
    "mesh": "target_weights=float,draft_weights=float",
    "shape_overrides": "sweep=budget,method=sd+rsd_s",
    "budgets": "sweep=budget,method=sd+rsd_s",
    "sd_max_length": "sweep=budget,method=sd+rsd_s",
    "lengths": "sweep=length,method=sd+rsd_s",
    "width": "sweep=length,method=sd+rsd_s",
    "sweep": "method=sd:6",
}


def _override(key, value):
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{key}={text}"


def test_every_speculative_key_reaches_the_typed_settings():
    from experiments.configs import common

    keys = set(common.SPECULATIVE_DEFAULTS) - {"job"}
    assert keys == set(SPECULATIVE_OTHER), keys ^ set(SPECULATIVE_OTHER)
    for key, value in SPECULATIVE_OTHER.items():
        base = SPECULATIVE_WITH.get(key, "")
        arg = ",".join(filter(None, [base, _override(key, value)]))
        before = spec_settings.from_config(default.get_config(base or None))
        after = spec_settings.from_config(default.get_config(arg))
        assert after != before, f"key {key!r} does not reach the settings"
        assert after.recorded[key] == value and "job" in after.recorded


def test_every_distill_and_toy_key_reaches_the_typed_settings():
    from experiments.configs import distill, toy_demo
    from experiments.distill import settings as distill_settings
    from experiments.toy_demo import settings as toy_settings

    other = dict(
        target="t2", init="scratch", init_from="d2", keep_layers="0+1", layers=2, hidden=64,
        heads=4, kv_heads=1, mlp_hidden=128, draft_vocab=100, freeze_embedding=False,
        dtype="bfloat16", seq_len=16, train_sequences=40, heldout_sequences=3, top_k=8,
        teacher_batch=2, steps=9, batch=3, learning_rate=0.5, warmup_steps=2,
        weight_decay=0.5, clip_norm=2.0, eval_every=4, checkpoint_every=5, seed=3,
        evaluate=False, eval_methods="sd:2", eval_dataset="chat", eval_prompts=1,
        eval_max_new_tokens=4, eval_temperatures="0.5", progress=False, plots=False,
        corpus="mix",
    )  # fmt: skip
    toy_other = dict(vocab=5, order=2, alpha=0.3, agreement=0.2, rounds=9, draft_cost=0.3,
                     seed=4, methods="sd:2")  # fmt: skip
    for module, lib, values in ((distill, distill_settings, other),
                                (toy_demo, toy_settings, toy_other)):  # fmt: skip
        keys = set(module.get_config().to_dict()) - {"job"}
        assert keys == set(values), keys ^ set(values)
        before = lib.from_config(module.get_config())
        for key, value in values.items():
            after = lib.from_config(module.get_config(_override(key, value)))
            assert after != before, f"key {key!r} does not reach the settings"


def test_settings_are_frozen():
    import dataclasses

    s = spec_settings.from_config(default.get_config())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.prompts.num_prompts = 3
    with pytest.raises(TypeError):
        s.recorded["seed"] = 3  # a read-only view of the recorded keys
