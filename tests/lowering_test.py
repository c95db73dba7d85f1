"""Nothing of the CPU kernels leaks into what runs on an accelerator: every method's step,
the prefill, the distillation step and the sharded step, exported with jax.export for TPU
and CUDA from this CPU (``python -m tests.lowering_check`` in its own process, 8 fake
devices), hold none of the project's CPU custom calls; the negative controls show the same
check finds them where they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    out = subprocess.run([sys.executable, "-m", "tests.lowering_check"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_case_was_exported(report):
    cases = report["cases"]
    for arch in ("llama", "qwen2", "gemma3_text"):
        for dtype in ("float32", "bfloat16"):
            mine = [k for k in cases if k.startswith(f"{arch} {dtype} ")]
            assert sum(" step " in k and "sharded" not in k for k in mine) >= 9, mine
            assert any(k.endswith("prefill") for k in mine)
            assert any("distill train step" in k for k in mine)
            assert any("sharded 2x4 step" in k for k in mine)
    assert any("tiled/int8 step rsd_s:2x2/tv" in k for k in cases)
    assert report["devices"] == 8


def test_no_cpu_kernel_reaches_an_accelerator_module(report):
    assert report["leaks"] == {}


def test_negative_controls_are_caught(report):
    if not report["kernels_built"]:
        if os.environ.get("CI"):
            pytest.fail("the CPU kernels must build in CI (x86 with AVX-512 and g++)")
        pytest.skip("CPU kernels not buildable here: nothing to leak")
    controls = report["controls"]
    assert set(controls["tiled step exported for the cpu"]) == {
        "rsd_f32_matmul",
        "rsd_int8_matmul",
        "rsd_nucleus_threshold",
    }
    assert controls["a kernel without platform_dependent, for the tpu"] == ["rsd_f32_matmul"]
