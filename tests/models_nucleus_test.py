"""The top-p kernel (models.kernels.nucleus): the exact nucleus threshold, exact methods with it."""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import adapter
from models.kernels import native, nucleus
from rsd_jax import generation as gen
from rsd_jax import transforms
from tests import lawcheck
from tests.models_draft_vocab_test import PROMPT, N, V, _exact_law, _loaded


def _kernel_or_skip():
    if not nucleus.cpu_kernel():
        if os.environ.get("CI"):
            pytest.fail("the top-p CPU kernel must build in CI (x86 with g++)")
        pytest.skip("top-p CPU kernel not buildable here (needs x86 and a C++ compiler)")


def _reference(row: np.ndarray, top_p: float) -> int:
    """Threshold by sorting in float64: the largest pattern whose kept mass reaches top_p
    (as float32, the type the engine holds it in)."""
    top_p = float(np.float32(top_p))
    bits = row.astype(np.float32).view(np.int32)
    order = np.argsort(-bits, kind="stable")
    sorted_bits = bits[order]
    mass = np.cumsum(np.where(sorted_bits >= 0, row[order].astype(np.float64), 0.0))
    last_of_value = np.searchsorted(-sorted_bits, -sorted_bits, side="right") - 1
    reached = np.nonzero(mass[last_of_value] >= top_p)[0]
    return int(sorted_bits[reached[0]]) if reached.size else 0


def _rows(seed: int, shape, scale: float) -> np.ndarray:
    logits = scale * jax.random.normal(jax.random.PRNGKey(seed), shape)
    return np.asarray(jax.nn.softmax(logits, axis=-1))


@pytest.mark.parametrize(
    "shape,scale",
    [((1, 1), 1.0), ((3, 7), 2.0), ((2, 3, 50), 0.3), ((4, 5000), 4.0), ((2, 151_936), 3.0)],
)
@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.95, 0.999])
def test_kernel_threshold_is_the_exact_nucleus(shape, scale, top_p):
    _kernel_or_skip()
    probs = _rows(7, shape, scale)
    got = np.asarray(jax.jit(nucleus.threshold)(probs, top_p))
    assert got.shape == shape[:-1] and got.dtype == np.int32
    want = np.array([_reference(r, top_p) for r in probs.reshape(-1, shape[-1])])
    np.testing.assert_array_equal(got.reshape(-1), want)
    # The XLA bisection it replaces sums in float32, so over 152k ids at top_p = 0.999 it
    # can land a few tiny ids away; the kept masses agree to float32 rounding.
    xla = np.asarray(jax.jit(transforms.top_p_threshold)(probs, top_p))
    bits = probs.view(np.int32)

    def mass(t):
        return np.sum(np.where(bits >= t[..., None], probs.astype(np.float64), 0), -1)

    np.testing.assert_allclose(mass(got), mass(xla), rtol=0, atol=1e-6)
    if shape[-1] < 10_000:
        np.testing.assert_array_equal(got, xla)


def test_ties_zeros_and_rows_short_of_top_p():
    _kernel_or_skip()
    probs = np.array(
        [
            [0.25, 0.25, 0.25, 0.25, 0.0],  # ties at the threshold are all kept
            [0.5, 0.0, 0.3, 0.0, 0.2],  # zeros never matter
            [0.2, 0.1, 0.1, 0.05, 0.05],  # whole mass 0.5 < top_p: keep everything (t = 0)
            [1.0, 0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    got = np.asarray(nucleus.threshold(probs, 0.6))
    want = [_reference(r, 0.6) for r in probs]
    np.testing.assert_array_equal(got, want)
    kept = probs.view(np.int32) >= got[:, None]
    np.testing.assert_array_equal(kept[0], [True, True, True, True, False])
    np.testing.assert_array_equal(kept[1], [True, False, True, False, False])
    assert got[2] == 0 and kept[2].all()
    np.testing.assert_array_equal(kept[3], [True, False, False, False, False])


@pytest.mark.parametrize("top_p", [0.3, 0.95])
def test_crowded_bins_of_near_flat_laws(top_p):
    """Many entries in the threshold's first-level bin take the kernel's other path."""
    _kernel_or_skip()
    flat = np.asarray(jax.nn.softmax(jnp.zeros((151_936,)).at[3].set(2.0)))
    near = np.asarray(jax.nn.softmax(0.01 * jax.random.normal(jax.random.PRNGKey(1), (60_000,))))
    for row in (flat, near):
        got = int(nucleus.threshold(row[None], top_p)[0])
        assert got == _reference(row, top_p)


def test_a_wrong_threshold_is_caught():
    """Negative control for the comparison above: a threshold one value off differs."""
    probs = _rows(3, (5, 400), 2.0)
    exact = np.array([_reference(r, 0.9) for r in probs])
    one_value_lower = []
    for row, t in zip(probs.view(np.int32), exact, strict=True):
        below = row[row < t]
        one_value_lower.append(int(below.max()))
    assert not np.array_equal(np.asarray(nucleus.threshold(probs, 0.9)), one_value_lower)


def test_switch_off_and_fallback(monkeypatch):
    monkeypatch.setenv("RSD_JAX_NUCLEUS_KERNEL", "0")
    assert nucleus.cpu_kernel.__wrapped__() is False
    monkeypatch.setenv("RSD_JAX_NUCLEUS_KERNEL", "1")
    if native.x86_cpu():
        _kernel_or_skip()


# Exactness: the 6-id pair of models_draft_vocab_test at T=1 with top-p 0.8, whose nucleus
# drops ids at every position; every method with the kernel must produce that law.
TOP_P = 0.8


def _nucleus_law(model) -> np.ndarray:
    """[V**N] law of N tokens at T=1, top-p TOP_P (float64 sort) after PROMPT."""
    full = _exact_law(model)  # sequence law without top-p; rebuild per-position laws from it
    law3 = full.reshape((V,) * N)
    out = np.zeros_like(law3)
    for prefix in itertools.product(range(V), repeat=N - 1):
        p = [law3.sum(axis=(1, 2))]
        p.append(law3[prefix[0]].sum(axis=1) / p[0][prefix[0]])
        p.append(law3[prefix[0], prefix[1]] / law3[prefix[0]].sum(axis=1)[prefix[1]])
        laws = [_truncate(x) for x in p]
        out[prefix] = laws[0][prefix[0]] * laws[1][prefix[1]] * laws[2]
    return out.reshape(-1)


def _truncate(p: np.ndarray) -> np.ndarray:
    keep = p.astype(np.float32).view(np.int32) >= _reference(p.astype(np.float32), TOP_P)
    return np.where(keep, p, 0.0) / p[keep].sum()


def _counts(method, target, draft, top_p, n=20_000):
    keys = jax.random.split(jax.random.PRNGKey(5), n)
    t, d = adapter.to_rsd_model(target), adapter.to_rsd_model(draft) if draft else None
    sampling = transforms.SamplingParams(temperature=1.0, top_p=top_p)
    out = gen.generate(t, d, [PROMPT] * n, method, key=keys[0], keys=keys, max_new_tokens=N,
                       sampling=sampling, nucleus=nucleus.threshold)  # fmt: skip
    codes = [lawcheck.seq_code(x[:N], V) for x in out.tokens]
    return np.bincount(codes, minlength=V**N)


def _pair():
    kw = dict(vocab_size=V, valid_vocab_size=V, bos_id=-1, eos_id=-1, pad_id=-1)
    return _loaded("qwen2", 1, **kw), _loaded("qwen2", 2, **kw)


@pytest.mark.parametrize("method", ["ar", "sd:3", "rsd_c:2-2", "rsd_s:3x2/tv"])
def test_every_method_is_exact_with_the_kernel_under_top_p(method):
    _kernel_or_skip()
    target, draft = _pair()
    law = _nucleus_law(target)
    assert (law == 0).sum() > 0  # the nucleus really drops sequences
    counts = _counts(method, target, draft if method != "ar" else None, TOP_P)
    assert lawcheck.chi2_pvalue(counts, law) >= lawcheck.ALPHA


def test_sampling_without_top_p_fails_the_nucleus_law():
    """Negative control: the untruncated law fails the same test."""
    target, draft = _pair()
    counts = _counts("sd:3", target, draft, 1.0)
    assert lawcheck.chi2_pvalue(counts, _nucleus_law(target)) < lawcheck.ALPHA
