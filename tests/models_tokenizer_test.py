"""Tokenizers: model directories' tokenizer.json, GGUF SentencePiece vocabularies, pairing.

The fast tests build tiny vocabularies with the `tokenizers` package or write them into a
GGUF file. The SentencePiece builder is checked against `greedy_sentencepiece` below, a
direct, slow statement of llama.cpp's rule (join the adjacent pair that spells the
best-scoring token, leftmost on ties; leftover characters become `<0xNN>` byte tokens;
control and user-defined tokens are cut out of the raw text first, longest first). The
Gemma 3 test (slow: a 253 MB preset) compares with llama.cpp's ids, stored in tests/data/ by
models/tools/make_reference.py.
"""

from __future__ import annotations

import json
import random
import types
from pathlib import Path

import pytest

from models import testing
from models.errors import IncompatibleModelsError
from models.loading import check_compatible, load_tokenizer
from models.loading import tokenizer as tokenizer_lib
from models.loading.gguf_loader import open_gguf
from models.loading.tokenizer import GEMMA_TEMPLATE, Tokenizer, build_byte_level_bpe, from_files

DATA = Path(__file__).parent / "data"
SPACE = "\u2581"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch, request):
    if "slow" not in request.keywords:  # the slow test uses the real preset cache
        monkeypatch.setenv("RSD_JAX_CACHE", str(tmp_path / "cache"))


# ----- a model directory's own tokenizer.json -----


def _tiny_backend(post_bos: bool):
    """The tiny byte-level BPE with its 3 special tokens; optionally a post-processor
    that prepends '<|im_start|>' (id 1) the way Llama 3's tokenizer.json adds BOS."""
    from tokenizers import AddedToken, processors

    tokens, _, merges = testing.tiny_vocab()
    backend = build_byte_level_bpe(tokens, merges, "smollm")
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in testing.SPECIALS]
    )
    if post_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
        )
    return backend


def test_directory_tokenizer_json_with_ids_from_generation_and_model_config(tmp_path):
    """No special tokens in tokenizer_config: ids come from generation_config.json (EOS: the
    first of a list), then config.json; BOS is added because the post-processor adds it;
    chat_template.jinja wins over tokenizer_config's template."""
    _tiny_backend(post_bos=True).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "unused"}))
    gen = {"bos_token_id": 1, "eos_token_id": [2, 0]}
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    (tmp_path / "config.json").write_text(json.dumps({"pad_token_id": 0, "eos_token_id": 0}))
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
    tok = from_files(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (1, 2, 0, True)
    assert tok.special_ids == {0, 1, 2}
    assert tok.kind() == "BPE (byte-level)"
    ids = tok.encode(" the<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids) == "<|im_start|> the<|im_end|>"
    assert tok.decode(ids, skip_special=True) == " the"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"

    tok.save(tmp_path / "saved")  # writes tokenizer_config with explicit tokens and flags
    again = from_files(tmp_path / "saved")
    assert again.fingerprint() == tok.fingerprint()
    assert again.encode("the hat") == tok.encode("the hat")
    restored = Tokenizer.from_json(tok.to_json())
    assert restored.fingerprint() == tok.fingerprint()
    assert restored.chat_template == tok.chat_template


def test_directory_tokenizer_config_wins_and_named_templates(tmp_path):
    _tiny_backend(post_bos=True).save(str(tmp_path / "tokenizer.json"))
    cfg = {
        "add_bos_token": False,
        "bos_token": {"content": "<|im_start|>"},
        "eos_token": "<|endoftext|>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "[{{ messages[0]['content'] }}]"},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    tok = from_files(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (1, 0, 0, False)
    assert tok.encode("a")[0] != 1
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "[x]"


def test_directory_unigram_tokenizer_json(tmp_path):
    """Any model a tokenizer.json holds is used as is (here a SentencePiece-style Unigram)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), (SPACE, -2.0), (SPACE + "ab", -1.0)]
    vocab += [(c, -3.0) for c in "abc"] + [(SPACE + "c", -1.5)]
    backend = HFTokenizer(models.Unigram(vocab, unk_id=0))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.save(str(tmp_path / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(tmp_path)
    assert tok.kind() == "Unigram"
    assert tok.encode("ab c") == [1, 4, 8]
    assert tok.decode(tok.encode("ab c")[1:]) == "ab c"
    assert Tokenizer.from_json(tok.to_json()).fingerprint() == tok.fingerprint()


# ----- GGUF SentencePiece ('llama') vocabularies -----

_CONTROL, _USER = 3, 4


def _spm_vocab(seed=0):
    """A tiny SentencePiece vocabulary: control tokens, 256 byte tokens, user-defined
    tokens (two spaces, a tag), and pieces with distinct random scores."""
    pieces = [SPACE, "a", "b", "c", "d", "é", "日", SPACE + "a", "ab", "bc", "cd", "abc"]
    pieces += [SPACE + "ab", SPACE + "abc", "dd", "ddd", "dddd", "é" + "d", SPACE + SPACE]
    pieces += ["ca", "cab", SPACE + "d", "日日"]
    tokens = ["<unk>", "<s>", "</s>", "<turn>"] + [f"<0x{b:02X}>" for b in range(256)]
    types_ = [2, _CONTROL, _CONTROL, _CONTROL] + [6] * 256
    tokens += ["  ", "<tag>"] + pieces
    types_ += [_USER, _USER] + [1] * len(pieces)
    rng = random.Random(seed)
    scores = [0.0] * (len(tokens) - len(pieces)) + [
        -float(s) for s in rng.sample(range(1000), len(pieces))
    ]
    return tokens, scores, types_


def _write_spm_gguf(path, tokens, scores, types_, add_space_prefix):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types_)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_space_prefix(add_space_prefix)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def greedy_sentencepiece(text, tokens, scores, types_, add_space_prefix):
    """llama.cpp's SentencePiece encoding, written plainly (slow; for tests only)."""
    ids = {t: i for i, t in enumerate(tokens)}
    whole = sorted(
        (t for t, typ in zip(tokens, types_, strict=True) if typ in (_CONTROL, _USER)),
        key=len,
        reverse=True,
    )
    fragments = [text]  # str: raw text, int: a token cut out of it
    for t in whole:  # longest first, as llama.cpp partitions special tokens
        out = []
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                continue
            parts = frag.split(t)
            for k, part in enumerate(parts):
                if part:
                    out.append(part)
                if k < len(parts) - 1:
                    out.append(ids[t])
        fragments = out
    result, after_special = [], True
    for frag in fragments:
        if isinstance(frag, int):
            result.append(frag)
            after_special = True
            continue
        text = (" " if add_space_prefix and after_special else "") + frag
        after_special = False
        symbols = list(text.replace(" ", SPACE))
        while True:
            best = None
            for k in range(len(symbols) - 1):
                joined = symbols[k] + symbols[k + 1]
                i = ids.get(joined)
                if i is not None and types_[i] == 1 and (best is None or scores[i] > best[0]):
                    best = (scores[i], k)
            if best is None:
                break
            k = best[1]
            symbols[k : k + 2] = [symbols[k] + symbols[k + 1]]
        for s in symbols:
            if s in ids and types_[ids[s]] == 1:
                result.append(ids[s])
            else:
                result += [ids[f"<0x{b:02X}>"] for b in s.encode("utf-8")]
    return result


@pytest.mark.parametrize("add_space_prefix", [False, True])
def test_sentencepiece_gguf_matches_greedy_merging(tmp_path, add_space_prefix):
    tokens, scores, types_ = _spm_vocab()
    path = _write_spm_gguf(tmp_path / "spm.gguf", tokens, scores, types_, add_space_prefix)
    tok = tokenizer_lib.from_gguf_metadata(open_gguf(path)[1])
    assert tok.kind() == "BPE (SentencePiece spaces, byte fallback)"
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, True)
    assert tok.special_ids == {1, 2, 3}
    rng = random.Random(1)
    alphabet = ["a", "b", "c", "d", "é", "日", "z", "ü", " ", "  ", "\n", "<tag>", "<turn>", "ab"]
    texts = ["", " ", "abc", "  abc  d", "日日日 zz", "ddddddd", "<turn>ab<tag> c"]
    texts += ["".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(300)]
    for text in texts:
        want = greedy_sentencepiece(text, tokens, scores, types_, add_space_prefix)
        got = tok.encode(text, add_bos=False)
        assert got == want, (text, got, want)
        assert tok.encode(text) == [1] + got
        # With the prefix, text after a special token reads back with an extra space (as
        # in llama.cpp); only the one at the very start is dropped.
        if not add_space_prefix or ("  " not in text and "<" not in text):
            assert tok.decode(got) == text, text


def test_unsupported_gguf_tokenizer_names_the_model():
    meta = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]}
    with pytest.raises(ValueError, match="'bert'.*'gpt2'.*'llama'"):
        tokenizer_lib.from_gguf_metadata(meta)


# ----- Gemma 3 (slow: the 253 MB preset, prepared on demand) -----


@pytest.mark.slow
def test_gemma3_tokenizer_matches_reference():
    """Ids equal llama.cpp's (llama-cpp-python 0.3.36, vocab_only, special tokens parsed) on
    283 texts: multilingual, code, emoji, whitespace runs, Gemma's control and user-defined
    tokens, HumanEval prompts and Shakespeare. (transformers 5.24's GGUF conversion differs
    from llama.cpp on 5 of them: runs of more than 31 spaces, which it builds from merges
    instead of the longest user-defined run, and a literal '\u2581'.)"""
    path = DATA / "gemma3-270m_tokenizer.json"
    if not path.is_file():
        pytest.fail(f"reference {path.name} missing (regenerate: models/tools/make_reference.py)")
    ref = json.loads(path.read_text())
    tok = load_tokenizer("gemma3-270m")
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (2, 1, 0, True)
    assert tok.kind() == "BPE (SentencePiece spaces, byte fallback)"
    mismatches = [
        (text, ids)
        for text, ids in zip(ref["texts"], ref["ids"], strict=True)
        if tok.encode(text, add_bos=False) != ids
    ]
    print(f"gemma3-270m vs {ref['reference']}: {len(ref['texts']) - len(mismatches)}"
          f"/{len(ref['texts'])} texts give equal ids")  # fmt: skip
    assert not mismatches, f"{len(mismatches)} differ, e.g. {mismatches[:2]}"
    for text, ids in zip(ref["texts"], ref["ids"], strict=True):
        if SPACE not in text:  # a literal '\u2581' reads back as a space, as in llama.cpp
            assert tok.decode(ids) == text
    turns = tok.encode("<start_of_turn>user\nHi<end_of_turn>", add_bos=False)
    assert turns[0] == 105 and turns[-1] == 106
    assert tok.encode("Hi")[0] == 2
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! "},
        {"role": "user", "content": "Bye"},
    ]
    assert tok.chat_template == GEMMA_TEMPLATE
    assert tok.apply_chat_template(messages) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert tok.encode_chat(messages[1:2])[:3] == [2, 105, 2364]


# ----- check_compatible -----


def _pair_model(tok, vocab_size=None, valid=None):
    valid = valid or tok.vocab_size
    config = testing.tiny_config(vocab_size=vocab_size or valid, valid_vocab_size=valid)
    return types.SimpleNamespace(config=config, tokenizer=tok)


def _tiny_tokenizer(pads=0, pre="smollm", swap_merges=False, rename=None, special=True):
    from tokenizers import AddedToken

    tokens, _, merges = testing.tiny_vocab()
    if swap_merges:  # same tokens and ids, merges 2 and 3 in the other order
        merges = [*merges[:2], merges[3], merges[2], *merges[4:]]
    if rename:
        tokens[rename[0]] = rename[1]
    backend = build_byte_level_bpe(tokens + [f"[PAD{len(tokens) + k}]" for k in range(pads)],
                                   merges, pre)  # fmt: skip
    if special:
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in testing.SPECIALS]
        )
    return Tokenizer(backend, 1, 2, 0, False, special_ids=(0, 1, 2) if special else ())


def test_pairs_differing_only_in_padding_are_compatible():
    """Like Qwen2.5 checkpoints with 151,936 or 152,064 rows for 151,665 real ids: the
    padding ids (rows and '[PAD..]' tokens past the valid range) do not matter."""
    base = _tiny_tokenizer()
    valid = base.vocab_size
    draft = _pair_model(base, vocab_size=valid + 7, valid=valid)
    target = _pair_model(_tiny_tokenizer(pads=20), vocab_size=valid + 20, valid=valid)
    check_compatible(draft, target)
    check_compatible(target, draft)


def test_incompatible_pairs_say_why(tmp_path):
    base = _pair_model(_tiny_tokenizer())
    valid = base.config.valid_vocab_size

    def fails(other, match):
        with pytest.raises(IncompatibleModelsError, match=match):
            check_compatible(base, other)

    padded = _pair_model(_tiny_tokenizer(pads=3))
    fails(padded, "draft has 265 valid ids .265 rows., target has 268 .268 rows.")
    renamed = _tiny_tokenizer(rename=(125, "ZZZ"))
    fails(_pair_model(renamed, valid=valid), "id 125 is 'z' in the draft but 'ZZZ' in the target")
    eos = _tiny_tokenizer()
    eos.eos_id = 0
    fails(_pair_model(eos), "draft eos_id=2, target 0")
    no_control = _pair_model(_tiny_tokenizer(special=False))
    fails(no_control, r"id 0 \('<\|endoftext\|>'\) is a control token only in the draft")
    fails(_pair_model(_tiny_tokenizer(swap_merges=True)), "merges differ: #2 is")
    fails(_pair_model(_tiny_tokenizer(pre="qwen2")), "pre-tokenizers differ")
    fails(types.SimpleNamespace(config=base.config, tokenizer=None), "only one of")

    tokens, scores, types_ = _spm_vocab()
    spm = tokenizer_lib.from_gguf_metadata(
        open_gguf(_write_spm_gguf(tmp_path / "s.gguf", tokens, scores, types_, True))[1]
    )
    kinds = "the draft's is BPE .byte-level., the target's BPE .SentencePiece spaces"
    fails(_pair_model(spm, valid=valid), kinds)
