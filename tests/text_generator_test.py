"""The text front door (experiments.text) on a tiny qwen2 pair with a real byte-level
tokenizer: greedy text equals AR's for every method, streaming equals the one-shot text for
the same seed, stop strings, chat templates, batches, and every bad input in one line."""

from __future__ import annotations

import jax
import pytest

from experiments.text import GenerationError, TextGenerator
from experiments.text.decoding import cut_at_stop, held_back
from models import testing
from models.arch import decoder
from models.errors import IncompatibleModelsError

METHODS = ["sd:3", "mrs:2x2", "spectr:2x2", "rsd_c:2-1", "rsd_s:2x2", "rsd_c:2-1/tv"]
PROMPTS = ["the cat", "a", "hello there friend, the end"]  # "a" is one token


@pytest.fixture(scope="module")
def tg(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pair")
    target, draft = testing.write_tiny_pair(directory)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSD_JAX_CACHE", str(directory / "cache"))
        return TextGenerator.load(str(target), str(draft))


def test_one_token_prompt_is_one_token(tg):
    assert len(tg.encode("a")) == 1 and len(tg.encode("the cat")) > 1


@pytest.mark.parametrize("method", METHODS)
def test_greedy_text_equals_autoregressive_text(tg, method):
    """T=0: every method's text is AR's, one-token prompts included (batched together)."""
    kw = dict(temperature=0, max_new_tokens=16)
    ar = tg.generate(PROMPTS, "ar", **kw)
    out = tg.generate(PROMPTS, method, **kw)
    assert [o.text for o in out] == [a.text for a in ar]
    assert [o.tokens for o in out] == [a.tokens for a in ar]
    assert all(len(o.tokens) == 16 and o.finish_reason == "length" for o in out)
    assert out[0].stats.target_calls <= ar[0].stats.target_calls


@pytest.mark.parametrize("method", ["sd:3", "rsd_s:2x2", "rsd_c:2-1/tv"])
def test_streamed_text_equals_the_text_of_one_call(tg, method):
    kw = dict(temperature=1.0, top_p=0.9, max_new_tokens=20, seed=7)
    for prompt in ("the cat", "a"):
        whole = tg.generate(prompt, method, **kw)
        stream = tg.stream(prompt, method, **kw)
        pieces = list(stream)
        assert "".join(pieces) == whole.text and len(pieces) > 1
        assert stream.completion.tokens == whole.tokens


def test_a_row_does_not_depend_on_its_batch(tg):
    kw = dict(temperature=1.0, max_new_tokens=12)
    key = jax.random.PRNGKey(3)
    keys = jax.numpy.stack([jax.random.fold_in(key, i) for i in range(3)])
    batch = tg.generate(PROMPTS, "rsd_s:2x2", keys=keys, **kw)
    alone = tg.generate([PROMPTS[2]], "rsd_s:2x2", keys=keys[2:], **kw)[0]
    assert batch[2].tokens == alone.tokens


def test_stop_strings_cut_the_text_and_stop_the_row(tg):
    full = tg.generate("the cat", "sd:3", temperature=0, max_new_tokens=24)
    stop = full.text[6:9]  # a string the greedy text reaches
    assert stop and stop in full.text
    cut = tg.generate("the cat", "sd:3", temperature=0, max_new_tokens=24, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert len(cut.tokens) < len(full.tokens)
    pieces = list(tg.stream("the cat", "sd:3", temperature=0, max_new_tokens=24, stop=stop))
    assert "".join(pieces) == cut.text


def test_stream_helpers_hold_back_a_possible_stop_and_an_unfinished_character():
    assert cut_at_stop("abcSTOPdef", ["STOP", "de"]) == "abc"
    assert held_back("abc ST", ["STOP"]) == 2 and held_back("abc", ["STOP"]) == 0
    assert held_back("ab\ufffd", []) == 1


def test_chat_messages_use_the_models_template(tg):
    messages = [{"role": "user", "content": "hi"}]
    rendered = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tg.encode(messages) == tg.tokenizer.encode(rendered)
    reply = tg.chat(messages, "sd:3", temperature=0, max_new_tokens=8)
    assert reply.text == tg.generate(messages, "ar", temperature=0, max_new_tokens=8).text


def test_the_context_caps_the_budget_instead_of_refusing(tg):
    long = "x" * (tg.context - 6)  # one token per byte-level char: fits, with 6 to spare
    assert len(tg.encode(long)) == tg.context - 6
    out = tg.generate(long, "sd:3", temperature=0, max_new_tokens=64)
    assert len(out.tokens) <= 6 and out.finish_reason in ("length", "eos")


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda tg: tg.generate(""), "the prompt is empty"),
        (lambda tg: tg.generate(["a", ""]), "prompt 1 is empty"),
        (lambda tg: tg.generate("x" * 200), "the prompt has 200 tokens; the model's context is"),
        (lambda tg: tg.generate("a", "nope:2"), "bad method 'nope:2'"),
        (lambda tg: tg.generate("a", temperature=-1), "temperature must be a finite number >= 0"),
        (lambda tg: tg.generate("a", top_p=0), "top_p must be in (0, 1]"),
        (lambda tg: tg.generate("a", max_new_tokens=0), "max_new_tokens must be >= 1"),
        (lambda tg: tg.generate("a", stop=[""]), "stop strings must be non-empty"),
        (lambda tg: tg.generate([{"role": "user"}]), "neither text nor a non-empty list"),
        (lambda tg: tg.chat([]), "chat needs a non-empty list"),
        (lambda tg: tg.generate([]), "no prompts given"),
    ],
)
def test_bad_input_is_one_line_error(tg, call, message):
    with pytest.raises(GenerationError) as e:
        call(tg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_drafting_method_without_a_draft_is_refused(tg):
    alone = TextGenerator(tg.bundle._replace(draft=None))
    assert alone.generate("a", "ar", temperature=0, max_new_tokens=4).text
    with pytest.raises(GenerationError, match="drafts, but no draft model is loaded"):
        alone.generate("a", "sd:2")


def test_tokenizers_that_differ_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RSD_JAX_CACHE", str(tmp_path / "cache"))
    target, _ = testing.write_tiny_pair(tmp_path)
    config = testing.tiny_config("qwen2")
    params = decoder.init_params(config, jax.random.PRNGKey(3))
    other = testing.write_tiny_gguf(tmp_path / "other.gguf", config, params, pre="qwen2")
    with pytest.raises(IncompatibleModelsError, match="tokenizers differ"):
        TextGenerator.load(str(target), str(other))
