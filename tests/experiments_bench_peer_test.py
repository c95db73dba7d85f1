"""experiments.bench.peer: our decoding vs transformers on the same weights.

Needs the optional extra (`pip install -e ".[peer]"`: torch, transformers, accelerate);
skipped without it. The fast test builds a tiny random Llama with transformers, saves it
as a safetensors directory that both sides load, and runs every system briefly; the slow
one runs the benchmark's entry point on the smollm2-135m GGUF (both sides dequantize it).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from experiments.bench import peer as bench_peer  # noqa: E402

PROMPT = [3, 17, 42, 9, 100, 5, 77, 8]
MAX_NEW = 8


def test_prefix_agreement():
    assert bench_peer.prefix_agreement([1, 2, 3], [1, 2, 4, 5]) == (2, 3)
    assert bench_peer.prefix_agreement([1, 2], [1, 2, 3]) == (2, 2)
    assert bench_peer.prefix_agreement([], [1]) == (0, 0)


def test_parse_temperatures():
    assert bench_peer.parse_temperatures("0+1") == [0.0, 1.0]
    with pytest.raises(ValueError):
        bench_peer.parse_temperatures("-1")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        initializer_range=0.5,  # peaked logits: greedy ties are unlikely
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    return str(path)


def test_bench_on_tiny_model(tiny_dir):
    lines = []
    result = bench_peer.bench(
        tiny_dir,
        tiny_dir,
        ["sd:2"],
        [0.0, 1.0],
        max_new=MAX_NEW,
        repeats=1,
        prompts=[PROMPT],
        log=lines.append,
    )
    assert any("threads" in line for line in lines)
    names = [bench_peer.OURS_AR, "ours SD", bench_peer.HF_PLAIN, bench_peer.HF_DEFAULT]
    names.append(bench_peer.HF_FOUR)
    for summary in result["summaries"]:
        rows = {r["system"].split(" [")[0]: r for r in summary["rows"]}
        assert sorted(rows) == sorted(names)
        for row in rows.values():
            assert 1 <= row["tokens"] <= MAX_NEW and row["seconds"] > 0
        # AR is one target call per token on both sides
        assert rows[bench_peer.OURS_AR]["block_efficiency"] == 1.0
        assert rows[bench_peer.HF_PLAIN]["target_calls"] == rows[bench_peer.HF_PLAIN]["tokens"]
        assert rows[bench_peer.OURS_AR]["ratio_vs_ours_ar"] == pytest.approx(1.0)
        assert rows[bench_peer.HF_PLAIN]["ratio_vs_hf_plain"] == pytest.approx(1.0)
        # draft == target: every drafted token is accepted, on both sides
        assert rows["ours SD"]["block_efficiency"] > 1.0
        assert rows[bench_peer.HF_FOUR]["block_efficiency"] > 1.0
        assert summary["ours_best"] and summary["hf_best"]
        table = bench_peer.markdown(summary)
        assert table.count("\n| ") == len(names) + 1  # header + one row per system
    greedy = result["summaries"][0]
    assert greedy["temperature"] == 0.0
    for row in greedy["rows"]:
        agree, compared = row["greedy_agree_with_ours_ar"]
        assert compared >= 1
        # same float32 weights: greedy agrees but for rare near-ties
        if row["system"] == bench_peer.HF_PLAIN:
            assert agree >= compared // 2, row
    assert "greedy_agree_with_ours_ar" not in result["summaries"][1]["rows"][0]


@pytest.mark.slow
def test_bench_on_smollm2_gguf():
    result = bench_peer.bench(
        "smollm2-135m",
        "smollm2-135m",
        [],
        [0.0],
        max_new=MAX_NEW,
        repeats=1,
        num_prompts=1,
        torch_threads=1,  # fast on a busy machine too
        log=lambda _: None,
    )
    (summary,) = result["summaries"]
    rows = {r["system"]: r for r in summary["rows"]}
    agree, compared = rows[bench_peer.HF_PLAIN]["greedy_agree_with_ours_ar"]
    assert compared == MAX_NEW and agree >= compared // 2
    assert rows[bench_peer.HF_FOUR]["block_efficiency"] > 1.0
    print(bench_peer.markdown(summary))
