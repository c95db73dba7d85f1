"""Multi-device decoding (rsd_jax.sharding, models.arch.sharding).

The 8-device checks run ``python -m tests.sharding_check`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (JAX fixes its device count when it
starts, and the rest of the suite runs on one device) and assert on the JSON it prints:

- meshes 1x8, 2x4 and 8x1 reproduce the single-device outputs token for token, for RSD-C
  and RSD-S, greedy (T=0) and sampled (T=1, and T=1 with top-p 0.9) with the same keys,
  with equal counters, committed caches equal to float rounding, and the state placed
  where the layout says;
- the compiled sharded step all-reduces after the row-parallel matmuls (attention o,
  MLP down) and gathers neither a weight nor a KV cache, while a negative control whose
  step forces the weights to be replicated is flagged by the same check.

The in-process tests cover the partition rules, make_mesh's errors and a one-device mesh end
to end (parsing mesh specs: tests/experiments_mesh_test.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from experiments.common import records as records_lib
from experiments.configs import default
from experiments.speculative import job as runner
from experiments.speculative import settings as spec_settings
from experiments.speculative import sources
from experiments.speculative import workdir as workdir_lib
from models import testing
from models.arch import decoder
from models.arch import sharding as model_sharding
from rsd_jax import generation as gen
from rsd_jax import sharding, transforms
from tests import sharding_check as check


def run_job(config, workdir, **kw):
    """The speculative job on a config (checked into settings first, as experiments.run does)."""
    return runner.run(spec_settings.from_config(config), workdir, **kw)


ROOT = Path(__file__).resolve().parents[1]
CACHE_TOLERANCE = 1e-4  # float32 K/V of a 2-layer model: only the reduction order differs


def _run_check() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sharding_check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"tests.sharding_check failed:\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in result, result["error"]
    for part in ("outputs", "hlo"):
        assert f"{part}_error" not in result, result[f"{part}_error"]
    assert result["devices"] == 8, result
    return result


@pytest.fixture(scope="session")
def check_result(tmp_path_factory):
    """The subprocess's JSON, computed once per test run even under pytest-xdist: the
    workers share this run's temporary directory, and a lock lets one of them run it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's directory, common to all workers
    path = shared / "sharding_check.json"
    with open(shared / "sharding_check.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            path.write_text(json.dumps(_run_check()))
        return json.loads(path.read_text())


@pytest.fixture(scope="session")
def outputs(check_result):
    return check_result["outputs"]["cases"]


@pytest.fixture(scope="session")
def hlo(check_result):
    return check_result["hlo"]


def _case(outputs, method, mesh, sampling, driver="while"):
    found = [
        c
        for c in outputs
        if (c["method"], c["mesh"], c["sampling"], c["driver"]) == (method, mesh, sampling, driver)
    ]
    assert len(found) == 1, f"no single case {method} {mesh} {sampling} {driver}"
    case = found[0]
    assert "error" not in case, f"{method} on {mesh} ({sampling}) raised:\n{case['error']}"
    return case


def _assert_same_outputs(case):
    where = f"{case['method']} on mesh {case['mesh']} ({case['sampling']}, {case['driver']})"
    assert case["equal"], f"{where} differs from one device at {case['first_mismatch']}"
    assert case["num_tokens"] == check.BATCH * check.MAX_NEW, where
    assert case["counters_equal"], f"{where}: counters differ"


@pytest.mark.parametrize("mesh", check.MESHES)
@pytest.mark.parametrize("method", check.METHODS)
def test_greedy_outputs_equal_one_device(outputs, method, mesh):
    _assert_same_outputs(_case(outputs, method, mesh, "greedy"))


@pytest.mark.parametrize("sampling", ["t1", "t1_top_p0.9"])
@pytest.mark.parametrize("mesh", check.MESHES)
@pytest.mark.parametrize("method", check.METHODS)
def test_sampled_outputs_equal_one_device_for_the_same_keys(outputs, method, mesh, sampling):
    """Exact equality: a float-rounding change could only flip a draw whose uniform lands
    within ~1e-7 of a threshold; none does here (checked, not assumed)."""
    _assert_same_outputs(_case(outputs, method, mesh, sampling))


def test_python_driver_on_a_mesh(outputs):
    _assert_same_outputs(_case(outputs, check.METHODS[-1], "2x4", "t1", driver="python"))


def test_batch_not_divisible_by_the_data_axis(check_result):
    message = check_result["outputs"]["batch_error"]
    assert "batch 4 is not divisible by the mesh's data axis (8)" in message, message


def test_committed_caches_match_and_state_is_placed(outputs):
    """Verification and cache commit under sharded caches: the committed K/V equal the
    single-device ones; tokens, keys and both caches sit where the layout says."""
    assert len(outputs) == len(check.METHODS) * len(check.MESHES) * len(check.SAMPLINGS) + 1
    for case in outputs:
        assert "error" not in case, case["error"]
        where = f"{case['method']} {case['mesh']} {case['sampling']}"
        assert case["committed_cache_max_abs_diff"] < CACHE_TOLERANCE, where
        for name, place in case["placement"].items():
            assert place["ok"], f"{where}: {name} placed {place['got']}, want {place['expected']}"


@pytest.mark.parametrize("mesh", ["1x8", "2x4"])
def test_row_parallel_matmuls_all_reduce(hlo, mesh):
    """Target (scanned layers): the o and down projections end in an all-reduce over "model"
    in the scan's loop body, so after every layer's; draft (unrolled, attention replicated):
    its layer's down projection does."""
    names = hlo[mesh]["row_parallel_all_reduces"]
    for proj in ("attn/o", "mlp/down"):
        want = f"/{decoder.LAYERS}/{proj}/"
        found = any(n.startswith("while/body/") and want in n for n in names)
        assert found, f"{mesh}: no all-reduce at {want} in a loop body: {names}"
    assert any(n.startswith(f"{decoder.LAYERS}_0/mlp/down/") for n in names), names
    # Target: 7 stacked block matrices + embed + head; draft: 3 MLP matrices + embed.
    assert hlo[mesh]["sharded_weights"] >= 13, hlo[mesh]


def test_data_parallel_has_no_model_collectives(hlo):
    assert hlo["8x1"]["row_parallel_all_reduces"] == []
    assert hlo["8x1"]["sharded_weights"] == 0


@pytest.mark.parametrize("mesh", check.MESHES)
def test_no_weight_or_cache_gathers(hlo, mesh):
    report = hlo[mesh]
    assert report["weight_gathers"] == [], f"{mesh}: weights gathered: {report['weight_gathers']}"
    assert report["cache_gathers"] == [], f"{mesh}: caches gathered: {report['cache_gathers']}"


def test_negative_control_is_flagged(hlo):
    """Forcing the sharded weights to be replicated inside the step gathers each of them,
    and the same check that passes above reports every one."""
    report = hlo["2x4 negative control"]
    assert len(report["weight_gathers"]) >= report["sharded_weights"] > 0, report


# ---------------------------------------------------------------- in-process (one device)


def test_make_mesh_errors():
    with pytest.raises(ValueError, match=r"needs 8 devices, but 1"):
        sharding.make_mesh(2, 4)
    with pytest.raises(ValueError, match=">= 1"):
        sharding.make_mesh(0, 1)
    mesh = sharding.make_mesh(1, 1)
    assert mesh.axis_names == (sharding.DATA, sharding.MODEL)


def test_partition_rules_split_or_fall_back():
    config = testing.tiny_config("qwen2", heads=16, kv_heads=8, mlp_hidden=48, vocab_size=272)
    params = decoder.init_params(config, jax.random.PRNGKey(0))
    specs = model_sharding.param_specs(params, config, model=8)
    attn, mlp = specs["layers_0"]["attn"], specs["layers_0"]["mlp"]
    assert attn["q"]["kernel"] == P(None, "model") and attn["q"]["bias"] == P("model")
    assert attn["k"]["kernel"] == P(None, "model") and attn["o"]["kernel"] == P("model", None)
    assert mlp["gate"]["kernel"] == P(None, "model") and mlp["down"]["kernel"] == P("model", None)
    assert specs["embed"]["embedding"] == P("model", None)
    assert specs["lm_head"]["kernel"] == P(None, "model")
    assert specs["final_norm"]["scale"] == P()
    assert model_sharding.cache_spec(config, 8) == P(None, "data", None, "model", None)
    # Over 32: 8 kv heads do not split, so attention is replicated; mlp 48, vocab 272 neither.
    specs32 = model_sharding.param_specs(params, config, model=32)
    q32 = specs32["layers_0"]["attn"]["q"]
    assert q32["kernel"] == P(None, None) and q32["bias"] == P(None)
    assert specs32["layers_0"]["attn"]["o"]["kernel"] == P(None, None)
    assert specs32["layers_0"]["mlp"]["up"]["kernel"] == P(None, None)
    assert specs32["embed"]["embedding"] == P(None, None)
    assert model_sharding.cache_spec(config, 32) == P(None, "data", None, None, None)
    no_vocab = model_sharding.param_specs(params, config, model=8, vocab_parallel=False)
    assert no_vocab["embed"]["embedding"] == P(None, None)


def test_partition_rules_of_stacked_layers():
    """With scan_layers each block param is stacked [L, ...]: its spec is the per-layer one
    with the layer axis (first) never split, for every param and model-axis size."""
    config = testing.tiny_config("qwen2", heads=16, kv_heads=8, mlp_hidden=48, vocab_size=272)
    params = decoder.init_params(config, jax.random.PRNGKey(0))
    scan_config, scan_params = testing.scanned(config, params)
    for model in (8, 32):
        loop = model_sharding.param_specs(params, config, model=model)
        scan = model_sharding.param_specs(scan_params, scan_config, model=model)
        assert scan[decoder.LAYERS] == jax.tree.map(
            lambda spec: P(None, *spec), loop["layers_0"], is_leaf=lambda x: isinstance(x, P)
        )
        assert {k: v for k, v in scan.items() if k != decoder.LAYERS} == {
            k: v for k, v in loop.items() if not k.startswith("layers_")
        }
    attn = model_sharding.param_specs(scan_params, scan_config, model=8)[decoder.LAYERS]["attn"]
    assert attn["o"]["kernel"] == P(None, "model", None) and attn["q"]["bias"] == P(None, "model")


def test_unknown_parameter_has_no_rule():
    config = testing.tiny_config("qwen2")
    params = decoder.init_params(config, jax.random.PRNGKey(0))
    params = {**params, "adapter": {"kernel": jnp.zeros((4, 4))}}
    with pytest.raises(ValueError, match="no partition rule for parameter 'adapter/kernel'"):
        model_sharding.param_specs(params, config, model=2)


def test_one_device_mesh_with_a_model_without_rules():
    """Models without partition rules are replicated; the mesh path matches the plain one."""
    target, draft, _ = testing.toy_pair()
    kw = dict(key=jax.random.PRNGKey(3), max_new_tokens=8, sampling=transforms.SamplingParams())
    prompts = [[1, 2, 3], [0, 3]]
    ref = gen.generate(target, draft, prompts, "rsd_s:2x2", **kw)
    out = gen.generate(
        target, draft, prompts, "rsd_s:2x2", mesh=sharding.make_mesh(1, 1), driver="python", **kw
    )
    assert out.tokens == ref.tokens
    assert out.state.tokens.sharding.spec == P(sharding.DATA)


def test_runner_mesh_key(tmp_path):
    """``mesh`` is a common config key; a data axis that does not divide ``batch`` is refused
    before any model loads."""
    arg = "method=rsd_s:2x2,dataset=humaneval,num_prompts=1,max_new_tokens=4"
    arg += ",progress=false,plots=false,bootstrap=10,target_weights=float,draft_weights=float"
    model_source, prompt_source = sources.toy_sources()

    def go(mesh, workdir):
        config = default.get_config(f"{arg},mesh={mesh}")
        return run_job(
            config, workdir, model_source=model_source, prompt_source=prompt_source,
            log=lambda _: None,
        )  # fmt: skip

    with pytest.raises(ValueError, match="'batch' must be a multiple of the mesh's data axis 2"):
        go("2x1", tmp_path / "refused")
    with pytest.raises(ValueError, match="needs 4 devices"):
        go("1x4", tmp_path / "too_many")
    go("", tmp_path / "plain")
    go("1x1", tmp_path / "mesh")
    plain, meshed = (
        records_lib.load_records(tmp_path / d / workdir_lib.RESULTS) for d in ("plain", "mesh")
    )
    assert plain and [r["tokens"] for r in plain.values()] == [r["tokens"] for r in meshed.values()]
