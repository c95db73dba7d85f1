"""Config plumbing and the toy demo job (the README's main command until issue 5 lands)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.common import runtime
from experiments.common.checks import ConfigError
from experiments.configs import common
from experiments.configs import toy_demo as toy_demo_config
from experiments.speculative import settings as spec_settings
from experiments.toy_demo import job as toy_demo
from experiments.toy_demo import settings as toy_settings

ROOT = Path(__file__).resolve().parents[1]


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
    config = toy_demo_config.get_config(
        "rounds=4000,methods=sd:2+rsd_s:2x2+spectr:2x2+rsd_c:2-1/tv"
    )
    rows = toy_demo.run(toy_settings.from_config(config))
    assert [r["method"] for r in rows] == ["AR", "SD", "RSD-S", "SpecTr", "RSD-C/TV"]
    for r in rows[1:]:
        assert 1.0 <= r["eta"] <= 3.0  # at most L + 1 tokens per call
        # 4000 rounds over 6 ids: TV noise is ~0.02; a lossy method would be far off.
        assert r["tv_first"] < 0.05
        assert np.all(np.diff(r["accept_by_depth"]) <= 0)
    assert "block efficiency" in toy_demo.format_table(rows, 4000)


def test_compile_cache_is_written_and_reused(tmp_path):
    """The persistent compilation cache of the entry points: a second process hits it."""
    script = (
        "import sys, jax, jax.numpy as jnp, jax.monitoring as mon\n"
        "events = []\n"
        "mon.register_event_listener(lambda name, **kw: events.append(name))\n"
        "from experiments.common import runtime\n"
        "runtime.enable_compile_cache(sys.argv[1], min_compile_seconds=0.0)\n"
        "f = jax.jit(lambda x: jnp.cumsum(jnp.sin(x) @ x.T, axis=0))\n"
        "print(float(f(jnp.ones((16, 16))).sum()))\n"
        "print(sum(e.endswith('/cache_hits') for e in events),"
        " sum(e.endswith('/cache_misses') for e in events))\n"
    )
    cache = tmp_path / "xla"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))

    def go():
        out = subprocess.run(
            [sys.executable, "-c", script, str(cache)], env=env, check=True,
            capture_output=True, text=True,
        )  # fmt: skip
        value, counts = out.stdout.strip().splitlines()
        return value, [int(x) for x in counts.split()]

    value, (hits, misses) = go()
    assert hits == 0 and misses > 0 and any(cache.iterdir())
    again, (hits, misses) = go()
    assert again == value and hits > 0 and misses == 0
    assert runtime.enable_compile_cache("") is None


@pytest.mark.parametrize("scan", [False, True])
def test_scan_layers_reaches_the_loaders(tmp_path, monkeypatch, scan):
    """Config key scan_layers: both models load with the stacked (or per-layer) layout."""
    import jax

    from experiments.configs import default
    from experiments.speculative import sources
    from models import testing
    from models.arch import decoder

    monkeypatch.setenv("RSD_JAX_CACHE", str(tmp_path / "cache"))
    config = testing.tiny_config("qwen2", rope_layout="rotate_half")
    paths = [
        testing.write_tiny_gguf(tmp_path / f"{n}.gguf", config, decoder.init_params(config, k))
        for n, k in (("t", jax.random.key(0)), ("d", jax.random.key(1)))
    ]
    arg = f"target={paths[0]},draft={paths[1]},draft_vocab=0,scan_layers={str(scan).lower()}"
    bundle = sources.real_models(spec_settings.from_config(default.get_config(arg)).models)
    for model in (bundle.target, bundle.draft):
        assert (decoder.LAYERS in model.params) == scan
        assert ("layers_0" in model.params) == (not scan)
    assert "scan_layers" not in bundle.info["target_config"]  # workdirs do not depend on it


@pytest.mark.parametrize(
    "arg,msg",
    [
        ("agreement=1.5", "'agreement' must be in [0, 1] (the draft mixes the target's table "
         "with another), got 1.5"),
        ("agreement=-0.5", "'agreement' must be in [0, 1]"),
        ("alpha=0", "'alpha' must be a finite number > 0 (the Dirichlet concentration), got 0.0"),
        ("alpha=inf", "'alpha' must be a finite number > 0"),
        ("order=0", "'order' must be an integer >= 1, got 0"),
        ("vocab=2", "'vocab' must be an integer >= 3, got 2"),
        ("vocab=100,order=5", "'order' must be small enough for (vocab + 1) ** (order - 1) * "
         "vocab <= 16777216, got 5"),
        ("rounds=0", "'rounds' must be an integer >= 1, got 0"),
        ("draft_cost=nan", "'draft_cost' must be a finite number >= 0, got nan"),
        ("seed=-1", "'seed' must be an integer in [0, 4294967295], got -1"),
        ("seed=99999999999999999999", "'seed' must be an integer in [0, 4294967295]"),
        ("methods=ar+sd:2", "'methods' must be drafting methods only (AR is always the first row)"),
        ("methods=sd:2+sd:2", "'methods' must be a '+'-separated list without repeats "
         "(repeated: sd:2)"),
        ("methods=sd:x", "'methods': bad method 'sd:x'"),
        ("methods=+", "'methods' must be a '+'-separated list of methods"),
    ],
)  # fmt: skip
def test_toy_demo_rejects_bad_settings_before_running(arg, msg, monkeypatch):
    from models import toy

    def never(*args, **kw):
        raise AssertionError("nothing may run for a bad setting")

    monkeypatch.setattr(toy, "random_table", never)
    with pytest.raises(ConfigError) as e:
        toy_demo.run(toy_settings.from_config(toy_demo_config.get_config(arg)))
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "config,error",
    [
        ("toy_demo.py:agreement=1.5,rounds=10",
         "error: bad config: 'agreement' must be in [0, 1] (the draft mixes the target's table "
         "with another), got 1.5"),
        ("default.py:max_new_tokens=0,seed=-1",
         "error: bad config: 'max_new_tokens' must be an integer >= 1, got 0; 'seed' must be an "
         "integer in [0, 4294967295], got -1"),
        ("default.py:shapes=21@rsd_c:7-2",  # raised while the config is built
         "error: --config: config key 'shapes' was renamed: write shape_overrides (was shapes), "
         "e.g. shape_overrides=21@rsd_c:7-2"),
        ("nowhere.py", "error: --config: no config file 'experiments/configs/nowhere.py'"),
    ],
)  # fmt: skip
def test_command_line_reports_a_bad_setting_in_one_line(tmp_path, config, error):
    workdir = tmp_path / "out"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "experiments.run", f"--config=experiments/configs/{config}",
         f"--workdir={workdir}", "--compile_cache="],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == error
    assert "Traceback" not in out.stderr
    assert not workdir.exists()  # nothing written


def test_local_weights_are_part_of_the_model_identity(tmp_path, monkeypatch):
    """Replacing a local GGUF by one with other weights (same shapes) changes the models'
    description stored in a workdir, so results of the two are never mixed."""
    import jax

    from experiments.configs import default
    from experiments.speculative import sources
    from models import testing
    from models.arch import decoder

    monkeypatch.setenv("RSD_JAX_CACHE", str(tmp_path / "cache"))
    config = testing.tiny_config("qwen2", rope_layout="rotate_half")
    path = tmp_path / "t.gguf"
    arg = f"target={path},draft={path},draft_vocab=0"
    infos = []
    for seed in (0, 1):
        testing.write_tiny_gguf(path, config, decoder.init_params(config, jax.random.key(seed)))
        models = spec_settings.from_config(default.get_config(arg)).models
        infos.append(sources.real_models(models).info)
    assert infos[0]["target_sha256"] != infos[1]["target_sha256"]
    assert infos[0]["target_config"] == infos[1]["target_config"]  # the config alone agrees


@pytest.mark.parametrize(
    "arg,msg",
    [
        ("shape=auto", "config key 'shape' was renamed: write auto_shape=true (was shape=auto)"),
        ("shapes=21@rsd_c:7-2", "config key 'shapes' was renamed: write shape_overrides"),
    ],
)
def test_renamed_speculative_keys_name_their_replacement(arg, msg):
    from experiments.configs import fixed_budget

    with pytest.raises(ValueError, match=re.escape(msg)):
        fixed_budget.get_config(arg)


def test_speculative_sections_hold_every_key_once():
    keys = [k for section in common.SPECULATIVE_SECTIONS.values() for k in section]
    assert len(keys) == len(set(keys)) == len(common.SPECULATIVE_DEFAULTS)
    assert not set(common.SPECULATIVE_RENAMED) & set(keys)
