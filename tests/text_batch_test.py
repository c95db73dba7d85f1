"""Prompt files (experiments.text.batch): input order, resume after an interruption equals an
uninterrupted run, settings that differ are refused, an existing output is never touched,
and every malformed line is named by number."""

from __future__ import annotations

import json

import pytest

from experiments.text import TextGenerator, batch
from models import testing

DEFAULTS = {"method": "rsd_s:2x2", "temperature": 1.0, "max_new_tokens": 10, "seed": 4}
SETUP = {"target": "tiny", "draft": "tiny-draft"}
LINES = [
    {"prompt": "the cat"},
    {"prompt": "a", "id": 7},
    {"messages": [{"role": "user", "content": "hi"}], "temperature": 0},
    {"prompt": "hello there friend, the end", "stop": ["e"]},
    {"prompt": "the end of the story is near", "max_new_tokens": 4},
]


@pytest.fixture(scope="module")
def tg(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pair")
    target, draft = testing.write_tiny_pair(directory)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSD_JAX_CACHE", str(directory / "cache"))
        return TextGenerator.load(str(target), str(draft))


def _write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tg, tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    lines = batch.read_lines(_write(d / "in.jsonl", LINES), tg, DEFAULTS)
    batch.run(tg, lines, d / "out.jsonl", SETUP, batch_size=2, progress=False, log=len)
    return lines, _read(d / "out.jsonl")


def test_output_is_in_input_order_with_ids_and_statistics(reference):
    lines, out = reference
    assert [r["line"] for r in out] == [1, 2, 3, 4, 5]
    assert out[1]["id"] == 7 and "id" not in out[0]
    assert out[4]["new_tokens"] <= 4
    assert all(r["finish_reason"] in ("eos", "length", "stop") for r in out)
    assert all(r["tokens_per_call"] >= 1 for r in out)


def test_a_line_does_not_depend_on_batching(tg, reference, tmp_path):
    lines, out = reference
    path = tmp_path / "one.jsonl"
    batch.run(tg, lines, path, SETUP, batch_size=1, progress=False, log=len)
    assert _read(path) == out


def test_an_interrupted_run_resumes_to_the_same_output(tg, reference, tmp_path, monkeypatch):
    lines, out = reference
    path = tmp_path / "out.jsonl"
    calls = []
    real = tg.decode_ids

    def interrupted(*a, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(tg, "decode_ids", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.run(tg, lines, path, SETUP, batch_size=2, progress=False, log=len)
    assert not path.exists()
    partial = path.with_name(path.name + batch.PARTIAL)
    assert len(partial.read_text().splitlines()) == 1 + 3  # header + two batches' lines
    monkeypatch.setattr(tg, "decode_ids", real)
    logs = []
    batch.run(tg, lines, path, SETUP, batch_size=2, progress=False, log=logs.append)
    assert any("resuming: 3 of 5 lines" in m for m in logs)
    assert _read(path) == out and not partial.exists()


def test_other_settings_are_refused_and_an_output_is_never_overwritten(tg, reference, tmp_path):
    lines, _ = reference
    path = tmp_path / "out.jsonl"
    partial = path.with_name(path.name + batch.PARTIAL)
    partial.write_text(json.dumps({"fingerprint": "another run"}) + "\n")
    with pytest.raises(batch.BatchError, match="other settings or another input"):
        batch.run(tg, lines, path, SETUP, progress=False, log=len)
    path.write_text("precious\n")
    with pytest.raises(batch.BatchError, match="exists; choose another --output"):
        batch.run(tg, lines, path, SETUP, progress=False, log=len)
    assert path.read_text() == "precious\n"


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"prompt": "ok"}\n{"prompt": "broken\n', "line 2: not JSON"),
        ('{"prompt": "ok"}\n\n["a list"]\n', "line 3: expected a JSON object, got list"),
        ('{"prompt": "a", "messages": []}\n', "line 1: give exactly one of 'prompt' and"),
        ('{"prompt": "a", "tempreature": 1}\n', "line 1: unknown keys ['tempreature']"),
        ('{"prompt": ""}\n', "line 1: the prompt is empty"),
        ('{"prompt": "a", "top_p": 3}\n', "line 1: top_p must be in (0, 1]"),
        ('{"messages": [{"role": "user"}]}\n', "line 1: the prompt is neither text nor"),
        ("\n\n", "holds no prompt"),
    ],
)
def test_a_bad_line_is_named_by_number(tg, tmp_path, text, message):
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    with pytest.raises(batch.BatchError) as e:
        batch.read_lines(path, tg, DEFAULTS)
    assert message in str(e.value) and "\n" not in str(e.value)
