"""The text front door on a real pair: greedy text equals AR's, streaming equals one call.

    python -m experiments.bench.text_check                       # the Qwen2.5-Coder pair
    python -m experiments.bench.text_check --methods=sd:5+rsd_s:2x4 --max_new_tokens=48

For every method and prompt: the greedy (T=0) text against AR's, and the streamed text at
T=1 / top-p 0.95 against the text of one ``generate`` call with the same seed; every
generation is compiled first (untimed), so the printed token rates compare decoding. One
JSON (``--out``) and a table.
"""

from __future__ import annotations

import json

from absl import app, flags

from experiments.common import runtime

_TARGET = flags.DEFINE_string("target", "qwen2.5-coder-1.5b", "Target preset or path.")
_DRAFT = flags.DEFINE_string("draft", "qwen2.5-coder-0.5b", "Draft preset or path.")
_METHODS = flags.DEFINE_string(
    "methods", "sd:5+mrs:2x3+spectr:2x3+rsd_c:2-1-1-1+rsd_s:2x4+rsd_c:2-1-1-1/tv", "'+'-separated."
)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "Tokens per generation.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")
PROMPTS = [
    "def quicksort(xs):\n",
    [{"role": "user", "content": "Explain what a KV cache is in two sentences."}],
    [{"role": "user", "content": "Write a haiku about compilers."}],
]


def check(tg, methods, max_new: int) -> list[dict]:
    """One row per method: greedy equality with AR, stream equality, token rates."""
    greedy = dict(temperature=0.0, max_new_tokens=max_new)
    sampled = dict(temperature=1.0, top_p=0.95, max_new_tokens=max_new, seed=11)
    ids = [tg.encode(p) for p in PROMPTS]
    ar_req = tg.request("ar", **greedy)
    tg.warm_up(ids[:1], ar_req)
    ar = [tg.decode_ids([i], ar_req)[0] for i in ids]
    rows = []
    for method in methods:
        req = tg.request(method, **greedy)
        tg.warm_up(ids[:1], req)
        out = [tg.decode_ids([i], req)[0] for i in ids]
        same_greedy = sum(a.text == b.text for a, b in zip(out, ar, strict=True))
        streamed = same_stream = 0
        for p in PROMPTS:
            whole = tg.generate(p, method, **sampled)
            stream = tg.stream(p, method, **sampled)
            text = "".join(stream)
            streamed += 1
            same_stream += text == whole.text and stream.completion.tokens == whole.tokens
        tok = sum(o.stats.new_tokens for o in out)
        sec = sum(o.stats.seconds for o in out)
        ar_rate = sum(a.stats.new_tokens for a in ar) / sum(a.stats.seconds for a in ar)
        rows.append(dict(
            method=method, prompts=len(ids), greedy_equal_ar=same_greedy,
            stream_equal_generate=same_stream, streamed=streamed,
            tokens_per_call=tok / sum(o.stats.target_calls for o in out),
            tokens_per_second=tok / sec, ratio_vs_ar=tok / sec / ar_rate,
        ))  # fmt: skip
    return rows


def main(argv):
    del argv
    runtime.announce()
    from experiments.text import TextGenerator

    tg = TextGenerator.load(_TARGET.value, _DRAFT.value)
    rows = check(tg, [m for m in _METHODS.value.split("+") if m], _MAX_NEW.value)
    print(
        "| method | greedy text == AR | streamed == one call (T=1) | tokens/call | tok/s | vs AR |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['greedy_equal_ar']}/{r['prompts']} | "
              f"{r['stream_equal_generate']}/{r['streamed']} | {r['tokens_per_call']:.2f} | "
              f"{r['tokens_per_second']:.2f} | {r['ratio_vs_ar']:.2f}x |")  # fmt: skip
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({"target": _TARGET.value, "draft": _DRAFT.value, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    runtime.quiet_backend_probe()
    app.run(main)
