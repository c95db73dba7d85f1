"""The speculative job as several JAX processes (jax.distributed, gloo on CPU) on localhost:
2 processes x 2 fake devices on a 2x2 mesh give the tokens of one process on one device for
every method; process 0 alone writes; a killed process stops the other with one line in
bounded time; a busy coordinator port is one line, not a crash."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _driver(workdir, count, index, port, devices, mesh, batch, die_after=0):
    cmd = [sys.executable, "-m", "tests.multiprocess_driver", str(workdir), str(count),
           str(index), str(port), str(devices), mesh, str(batch), str(die_after)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _records(workdir) -> dict:
    lines = (Path(workdir) / "results.jsonl").read_text().splitlines()
    return {json.loads(x)["key"]: json.loads(x) for x in lines}


def test_two_processes_give_the_tokens_of_one_for_every_method(tmp_path):
    ref = _driver(tmp_path / "one", 1, 0, 0, 1, "", 1)  # one device, no mesh, one prompt
    assert ref.wait(timeout=900) == 0, ref.stderr.read()
    port = _free_port()
    procs = [_driver(tmp_path / f"p{i}", 2, i, port, 2, "2x2", 2) for i in (0, 1)]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stderr.read()
    ours, theirs = _records(tmp_path / "p0"), _records(tmp_path / "one")
    assert set(ours) == set(theirs) and len(ours) == 4 * 7  # 4 prompts x 7 methods
    assert all(ours[k]["tokens"] == theirs[k]["tokens"] for k in ours)
    assert {r["batch_size"] for r in ours.values()} == {2}
    assert not (tmp_path / "p1").exists()  # process 1 never writes
    assert (tmp_path / "p0" / "summary.json").is_file()


def test_a_killed_process_stops_the_other_in_bounded_time(tmp_path):
    port = _free_port()
    start = time.monotonic()
    procs = [_driver(tmp_path / f"p{i}", 2, i, port, 2, "2x2", 2, die_after=2) for i in (0, 1)]
    assert procs[1].wait(timeout=900) == 3  # died after its second record
    rc = procs[0].wait(timeout=300)
    waited = time.monotonic() - start
    err = procs[0].stderr.read()
    assert rc != 0 and "Traceback" not in err.split("another process")[0][-2000:]
    assert "error: process 0: another process of this run stopped" in err, err[-3000:]
    assert waited < 300


def test_a_busy_coordinator_port_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "experiments.run",
               "--config=experiments/configs/default.py:mesh=2x1,batch=2,target_weights=float,"
               "draft_weights=float", f"--workdir={tmp_path / 'w'}", "--compile_cache=",
               f"--coordinator_address=localhost:{port}", "--num_processes=2",
               "--process_id=0"]  # fmt: skip
        out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: port {port} of --coordinator_address=localhost:{port} is in use"
    )
    assert not (tmp_path / "w").exists()


def test_partial_distributed_flags_are_one_line(tmp_path):
    cmd = [sys.executable, "-m", "experiments.run", "--config=experiments/configs/default.py",
           f"--workdir={tmp_path / 'w'}", "--num_processes=2"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "give all of --coordinator_address, --num_processes and --process_id" in out.stderr


def test_the_text_cli_over_two_processes_writes_what_one_process_writes(tmp_path):
    """python -m experiments.generate --prompts_file on a 2x2 mesh: two processes with two
    devices each write the file one process with four devices writes (process 0 alone)."""
    from models import testing

    target, draft = testing.write_tiny_pair(tmp_path / "pair")
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "the cat"}\n{"prompt": "a"}\n{"prompt": "hello there"}\n')

    def cmd(out, *extra):
        return [sys.executable, "-m", "experiments.generate", f"--target={target}",
                f"--draft={draft}", f"--prompts_file={src}", f"--output={out}",
                "--method=rsd_s:2x2", "--max_new_tokens=10", "--seed=3", "--mesh=2x2",
                "--noprogress", *extra]  # fmt: skip

    def env(devices):
        flags = f"--xla_force_host_platform_device_count={devices}"
        return ENV | {"XLA_FLAGS": flags, "RSD_JAX_CACHE": str(tmp_path / "cache")}

    one = subprocess.run(cmd(tmp_path / "one.jsonl"), cwd=ROOT, env=env(4), capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert one.returncode == 0, one.stderr
    port = _free_port()
    procs = [
        subprocess.Popen(
            cmd(
                tmp_path / f"two{i}.jsonl",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=ROOT,
            env=env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in (0, 1)
    ]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stderr.read()
    assert (tmp_path / "two0.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert not (tmp_path / "two1.jsonl").exists()
