"""``python -m experiments.generate`` as a user runs it (subprocesses, tiny pair): one prompt
streamed with statistics and the AR comparison, a prompt file, a chat over stdin, and bad
input ending in one line with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import testing

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pair")
    target, draft = testing.write_tiny_pair(directory)
    return directory, target, draft


def _run(pair, *args, stdin=None):
    directory, target, draft = pair
    env = dict(os.environ, RSD_JAX_CACHE=str(directory / "cache"), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "experiments.generate", f"--target={target}",
           f"--draft={draft}", "--max_new_tokens=12", *args]  # fmt: skip
    return subprocess.run(
        cmd, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=600
    )


def test_one_prompt_streams_then_reports_and_compares_with_ar(pair):
    out = _run(pair, "--prompt=the cat", "--method=rsd_s:2x2", "--temperature=0", "--compare_ar")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()  # the text
    err = out.stderr
    assert "[rsd_s:2x2: 12 tokens," in err and "tokens per target call" in err
    assert "acceptance by depth" in err and "[ar: 12 tokens" in err
    assert "rsd_s:2x2 / AR token rate:" in err and "greedy texts identical: yes" in err


def test_prompt_file_writes_every_line_in_order(pair, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "the cat"}\n{"prompt": "a", "id": "b"}\n{"prompt": "hi there"}\n')
    dst = tmp_path / "out.jsonl"
    out = _run(pair, f"--prompts_file={src}", f"--output={dst}", "--method=sd:2",
               "--temperature=0", "--compare_ar", "--noprogress")  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [x["line"] for x in lines] == [1, 2, 3] and lines[1]["id"] == "b"
    assert "identical greedy texts 3/3" in out.stderr and "ratio" in out.stderr


def test_chat_keeps_the_history_over_turns(pair):
    out = _run(pair, "--chat", "--method=sd:2", "--temperature=0", stdin="hi\nthe cat\n/reset\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("assistant> ") == 2 and out.stdout.count("you> ") == 4
    assert out.stderr.count("[sd:2:") == 2 and "(history cleared)" in out.stderr


@pytest.mark.parametrize(
    "args,error",
    [
        (["--prompt="], "error: the prompt is empty"),
        (["--prompt=hi", "--method=nope:1"], "error: bad method 'nope:1'"),
        (["--prompt=hi", "--draft=/nowhere.gguf"], "error: '/nowhere.gguf' is neither a preset"),
        (["--prompt=hi", "--chat"], "give exactly one of --prompt, --prompts_file and --chat"),
        (["--prompts_file=BAD", "--output=OUT"], "line 2: not JSON"),
    ],
)
def test_bad_input_ends_in_one_line_and_writes_nothing(pair, tmp_path, args, error):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    args = [a.replace("BAD", str(bad)).replace("OUT", str(tmp_path / "out.jsonl")) for a in args]
    out = _run(pair, *args)
    assert out.returncode != 0
    assert error in out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == [bad]
