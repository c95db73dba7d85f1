"""Tiled and int8 weights (`models.arch.quantize`, `models.kernels.tiled_matmul`): the scheme,
the CPU kernel against plain XLA, the decoder, and exactness of every method with an int8 draft."""

from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import testing
from models.arch import decoder, quantize
from models.arch import head as head_lib
from models.kernels import tiled_matmul
from models.loaded import LoadedModel
from tests import lawcheck
from tests.models_draft_vocab_test import V, _counts, _exact_law, _loaded


def test_quantize_rows_error_bound_and_zero_columns():
    w = np.random.default_rng(0).standard_normal((3, 40, 70)).astype(np.float32)
    w[1, :, 5] = 0.0
    q, scale = quantize.quantize_rows(w, axis=-2)
    assert q.dtype == np.int8 and scale.shape == (3, 70) and np.abs(q).max() == 127
    err = np.abs(q * scale[:, None, :] - w)
    assert np.all(err <= scale[:, None, :] / 2 + 1e-7)
    assert scale[1, 5] == 1.0 and not q[1, :, 5].any()
    with pytest.raises(ValueError, match="not finite"):
        quantize.quantize_rows(np.array([[1.0, np.nan]]), axis=0)


def test_tiles_layout():
    w = np.random.default_rng(1).standard_normal((5, 70)).astype(np.float32)
    tiles, scale = quantize.tiles_of(w)
    assert tiles.shape == (2, 5, 64) and scale.shape == (128,)
    q, s = quantize.quantize_rows(w, axis=-2)
    np.testing.assert_array_equal(tiles[1, :, 3], q[:, 67])  # column 64 b + j
    np.testing.assert_array_equal(tiles[1, :, 6:], 0)  # padding columns
    np.testing.assert_array_equal(scale[:70], s)


def _kernel_or_skip():
    if not tiled_matmul.cpu_kernel():
        if os.environ.get("CI"):
            pytest.fail("the tiled CPU kernel must build in CI (x86 with AVX-512 and g++)")
        pytest.skip("tiled CPU kernel not buildable here (needs x86 AVX-512 and a C++ compiler)")


@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7, 13])
@pytest.mark.parametrize("shape", [(7, 64), (33, 200), (128, 1)])
def test_cpu_kernel_equals_the_xla_product(rows, shape, int8):
    """Every remainder of the kernel's 6-row passes, widths below, at and past one tile."""
    _kernel_or_skip()
    d, f = shape
    rng = np.random.default_rng(rows * 1000 + d)
    tiles, scale = quantize.tiles_of(rng.standard_normal((d, f)), int8)
    tiles, scale = jnp.asarray(tiles), None if scale is None else jnp.asarray(scale)
    x = jnp.asarray(rng.standard_normal((2, rows, d)), jnp.float32)
    got = jax.jit(lambda x, t: tiled_matmul.matmul(x, t, scale, f))(x, tiles)
    ref = tiled_matmul.reference(x, tiles, scale)[..., :f]
    assert got.shape == (2, rows, f)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    # and both are the float product of the (dequantized) matrix
    w = np.moveaxis(np.asarray(tiles, np.float64), 0, 1).reshape(d, -1)
    w = w if scale is None else w * np.asarray(scale)
    np.testing.assert_allclose(got, np.asarray(x, np.float64) @ w[:, :f], rtol=1e-4, atol=1e-4)


def _dequantized(model: LoadedModel, q: LoadedModel) -> LoadedModel:
    """The float model whose weights are exactly the int8 model's q * scale."""

    def walk(fl, qt):
        out = {}
        for key, value in fl.items():
            if isinstance(value, dict):
                out[key] = walk(value, qt[key])
            elif key in ("kernel", "embedding"):
                tiles = np.asarray(qt["kernel"], np.float32)
                w = np.moveaxis(tiles, -3, -2).reshape(*tiles.shape[:-3], tiles.shape[-2], -1)
                if "kernel_scale" in qt:
                    w = w * np.asarray(qt["kernel_scale"])[..., None, :]  # [.., D, Fp]
                if key == "embedding":  # stored as E^T [D, V]
                    w = w[:, : value.shape[0]].T
                else:
                    w = w[..., : value.shape[-1]]
                out[key] = jnp.asarray(w, value.dtype)
            else:
                out[key] = value
        return out

    return model._replace(params=walk(model.params, q.params))


CASES = [("llama", False, False), ("qwen2", False, True), ("qwen2", True, False)]


@pytest.mark.parametrize("weights", ["int8", "tiled"])
@pytest.mark.parametrize("arch,restricted,scan", CASES)
def test_tiled_decoder_is_the_float_decoder_of_its_weights(arch, restricted, scan, weights):
    """Tied (llama) and separate (qwen2) heads, a restricted head, stacked layers: the int8
    forward equals the float forward of q * scale and stays close to the original; the
    tiled float32 forward equals the original to float rounding."""
    full = _loaded(arch, 0, scan_layers=scan)
    if restricted:
        full = head_lib.restrict_head(full, [3, 40, 7, 200])
    q = quantize.convert(full, weights)
    assert q.config.weights == weights and q.config.to_json() != full.config.to_json()
    tokens, lengths = jnp.array([[5, 17, 99, 3, 250]], jnp.int32), jnp.array([5])
    outs = []
    for m in (full, q, _dequantized(full, q)):
        cache = decoder.init_cache(m.config, 1, 8)
        outs.append(np.asarray(decoder.prefill(m.config, m.params, tokens, lengths, cache)[0]))
    original, int8, dequantized = outs
    live = original > decoder.MASK_VALUE / 2
    np.testing.assert_allclose(int8[live], dequantized[live], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(int8[~live], np.float32(decoder.MASK_VALUE))
    tv = 0.5 * np.abs(jax.nn.softmax(int8) - jax.nn.softmax(original)).sum()
    if weights == "int8":
        assert 0 < tv < 0.02
    else:
        np.testing.assert_allclose(int8[live], original[live], rtol=1e-5, atol=1e-5)


def test_quantize_refuses_twice_and_bad_layouts():
    model = _loaded("qwen2", 0)
    q = quantize.quantize_int8(model)
    with pytest.raises(ValueError, match="already has int8"):
        quantize.quantize_int8(q)
    broken = dict(model.params)
    broken.pop("lm_head")
    with pytest.raises(ValueError, match="do not match"):
        quantize.quantize_int8(model._replace(params=broken))
    with pytest.raises(ValueError, match="weights"):
        testing.tiny_config("qwen2", weights="int4")
    with pytest.raises(ValueError, match="float32"):
        testing.tiny_config("qwen2", weights="tiled", dtype="bfloat16")


# Exactness with an int8 draft: the 6-id pair of models_draft_vocab_test, its draft's
# weights as int8 (its head, 6 ids, padded to one 64-column tile inside the forward).


def _int8_pair():
    kw = dict(vocab_size=V, valid_vocab_size=V, bos_id=-1, eos_id=-1, pad_id=-1)
    return _loaded("qwen2", 1, **kw), quantize.quantize_int8(_loaded("qwen2", 2, **kw))


@pytest.mark.parametrize("method", ["sd:3", "spectr:2x2", "rsd_c:2-2", "rsd_s:3x2/tv"])
def test_every_method_stays_lossless_with_an_int8_draft(method):
    target, draft = _int8_pair()
    counts = _counts(method, target, draft)
    assert lawcheck.chi2_pvalue(counts, _exact_law(target)) >= lawcheck.ALPHA


def test_int8_draft_law_differs_from_the_target_law():
    """Negative control: sampling the int8 draft itself fails the same test."""
    target, draft = _int8_pair()
    assert lawcheck.chi2_pvalue(_counts("ar", draft, None), _exact_law(target)) < lawcheck.ALPHA


@pytest.mark.parametrize("weights", ["tiled", "int8"])
def test_loading_in_a_layout_equals_converting_after(tmp_path, monkeypatch, weights):
    """load_model(weights=...) converts tensor by tensor as the GGUF's cache is read; the
    params are those of quantize.convert on the float model, bit for bit, and the device
    layout equals the numpy reference of tiles_of."""
    monkeypatch.setenv("RSD_JAX_CACHE", str(tmp_path / "cache"))
    from models import load_model

    config = testing.tiny_config("qwen2")
    params = decoder.init_params(config, jax.random.PRNGKey(5), noise=0.3)
    path = testing.write_tiny_gguf(tmp_path / "t.gguf", config, params)
    for _ in range(2):  # converting from the GGUF, then from the cache
        direct = load_model(path, weights=weights)
        after = quantize.convert(load_model(path), weights)
        assert direct.config == after.config
        chex.assert_trees_all_equal(direct.params, after.params)
    w = np.random.default_rng(2).standard_normal((3, 40, 130)).astype(np.float32)
    for int8 in (True, False):
        want, want_scale = quantize.tiles_of(w, int8)
        got, got_scale = quantize.device_tiles(jnp.asarray(w), int8)
        np.testing.assert_array_equal(np.asarray(got), want)
        if int8:
            np.testing.assert_array_equal(np.asarray(got_scale), want_scale)
