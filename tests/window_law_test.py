"""Exact output law on a sliding-window model whose window is shorter than prompt + tree.

In a scored draft tree a node of depth d has position prefix + d but sits at slot prefix +
its BFS index, so a window counted in cache slots instead of positions would change the
target's laws inside trees, and with them the output law. Here the window (2) is shorter
than the prompt (3) plus the generated tokens (3), the draft is a close copy of the target
(so trees are accepted deep), and the law of the three generated tokens must equal the
target's, enumerated exactly (chi-square at lawcheck.ALPHA, 2x10^4 generations).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from models import testing
from models.arch import decoder
from models.loaded import LoadedModel
from tests import lawcheck
from tests import models_draft_vocab_test as dv


@functools.cache
def _pair():
    config = testing.tiny_config(
        "mistral", vocab_size=dv.V, valid_vocab_size=dv.V, bos_id=-1, eos_id=-1, pad_id=-1,
        rope_layout="rotate_half", tied_embeddings=False, sliding_window=2, name="tiny-window",
    )  # fmt: skip
    params = decoder.init_params(config, jax.random.PRNGKey(0), noise=0.3)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    noisy = [x + 0.2 * jnp.std(x) * jax.random.normal(k, x.shape)
             for x, k in zip(leaves, keys, strict=True)]  # fmt: skip
    target = LoadedModel(config, params, None)
    return target, LoadedModel(config, jax.tree.unflatten(treedef, noisy), None)


def test_the_window_changes_the_law():
    """Premise: without the window the target's law of three tokens is another one."""
    target, _ = _pair()
    wide = target._replace(config=target.config.replace(sliding_window=0))
    gap = abs(dv._exact_law(target) - dv._exact_law(wide)).sum()
    assert gap > 0.05, gap


@pytest.mark.parametrize("method", ["rsd_c:2-2", "rsd_s:3x2/tv"])
def test_tree_methods_keep_the_windowed_targets_law(method):
    target, draft = _pair()
    counts = dv._counts(method, target, draft)
    assert lawcheck.chi2_pvalue(counts, dv._exact_law(target)) >= lawcheck.ALPHA


def test_sampling_the_draft_itself_is_rejected():
    """Negative control: the close copy's own law fails the same test."""
    target, draft = _pair()
    counts = dv._counts("ar", draft, None)
    assert lawcheck.chi2_pvalue(counts, dv._exact_law(target)) < lawcheck.ALPHA
