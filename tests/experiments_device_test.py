"""The device check (python -m experiments.bench.device) on a tiny pair, so it never rots: the
command writes its table and JSON, and a reference it wrote matches itself exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from experiments.bench import device_check as device
from experiments.speculative import sources
from experiments.speculative.settings import Models
from models import testing

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_runs_and_matches_its_own_reference(tmp_path, monkeypatch):
    target, draft = testing.write_tiny_pair(tmp_path / "pair")
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RSD_JAX_CACHE=str(cache))
    ref, out = tmp_path / "ref.json", tmp_path / "device.json"
    cmd = [sys.executable, "-m", "experiments.bench.device", f"--target={target}",
           f"--draft={draft}", "--methods=sd:3+rsd_s:2x2", "--batches=1+2",
           "--max_new_tokens=6", "--widths=1+2+4+8", "--copy_mb=8", f"--reference={ref}",
           "--write_reference", f"--out={out}"]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| target |" in run.stdout and "greedy == AR" in run.stdout
    result = json.loads(out.read_text())
    assert result["read_bandwidth_gb_s"] > 0 and result["target"]["ar_over_floor"] > 0
    assert set(result["target"]["tree_cost"]) == {"1", "2", "4", "8"}
    assert {(r["batch"], r["method"]) for r in result["rates"]} == {
        (b, m) for b in (1, 2) for m in ("ar", "sd:3", "rsd_s:2x2")
    }
    assert all(r["greedy_equal_ar"] for r in result["rates"])

    monkeypatch.setenv("RSD_JAX_CACHE", str(cache))
    bundle = sources.real_models(Models(str(target), str(draft), 0, "auto", "auto", "auto",
                                        False, None))  # fmt: skip
    again = device.logit_check(bundle, json.loads(ref.read_text()))
    assert again["top1_agreement"] == 1.0 and again["max_abs_dlogp"] < 1e-5
    other = testing.write_tiny_pair(tmp_path / "other", agreement=0.0)[1]  # other weights
    bundle = sources.real_models(Models(str(other), str(draft), 0, "auto", "auto", "auto",
                                        False, None))  # fmt: skip
    off = device.logit_check(bundle, json.loads(ref.read_text()))
    assert off["max_abs_dlogp"] > 0.1  # the check sees a different model
