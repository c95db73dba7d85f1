"""rsd_jax.kv_cache: committing a path moves entries (overlapping ranges too); masks; prefill."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from rsd_jax import kv_cache
from rsd_jax import tree as tree_lib

LAYERS, B, S, D = 2, 2, 12, 3


class Cache(NamedTuple):
    """Follows rsd_jax.interface: [L, B, S, ...] arrays of any rank >= 3 and dtype."""

    k: jnp.ndarray  # [layers, B, S, D] float32
    v: jnp.ndarray  # [layers, B, S] int32
    index: jnp.ndarray  # [B]


def _cache() -> Cache:
    """Every entry names its own layer, row and slot, so a moved entry shows where it came from."""
    layer, row, slot = np.meshgrid(np.arange(LAYERS), np.arange(B), np.arange(S), indexing="ij")
    v = 1000.0 * layer + 100.0 * row + slot
    k = v[..., None] + 0.1 * np.arange(D)
    return Cache(jnp.asarray(k, jnp.float32), jnp.asarray(-v, jnp.int32), jnp.array([7, 9]))


def _reference(cache: Cache, src, dst_start, count) -> dict:
    """Reads every source first, then writes: what ``commit_path`` promises."""
    out = {}
    for name in ("k", "v"):
        old = np.asarray(getattr(cache, name))
        new = old.copy()
        for b in range(B):
            for i in range(int(count[b])):
                new[:, b, dst_start[b] + i] = old[:, b, src[b][i]]
        out[name] = new
    return out


def _check(src, dst_start, count):
    cache = _cache()
    src, dst_start, count = np.asarray(src), np.asarray(dst_start), np.asarray(count)
    got = kv_cache.commit_path(cache, jnp.asarray(src), jnp.asarray(dst_start), jnp.asarray(count))
    want = _reference(cache, src, dst_start, count)
    chex.assert_trees_all_equal(np.asarray(got.k), want["k"])
    chex.assert_trees_all_equal(np.asarray(got.v), want["v"])
    chex.assert_trees_all_equal(got.index, cache.index)  # the index is the caller's business
    return got


def test_commit_moves_the_accepted_entries_after_the_prefix():
    # Row 0: prefix of 5, accepted tree slots 0, 2, 5 (cache slots 5, 7, 10) -> slots 5, 6, 7.
    # Row 1: prefix of 4, accepted tree slots 0, 3 (cache slots 4, 7) -> slots 4, 5.
    got = _check([[5, 7, 10], [4, 7, 0]], [5, 4], [3, 2])
    np.testing.assert_array_equal(np.asarray(got.v[0, 0, 5:8]), [-5, -7, -10])
    np.testing.assert_array_equal(np.asarray(got.v[1, 1, 4:7]), [-1104, -1107, -1106])


def test_overlapping_ranges_read_before_they_write():
    # Slot 3 takes slot 4's entry and slot 4 takes slot 3's: copying one entry at a time
    # would write slot 3 first and then copy that new value into slot 4.
    got = _check([[4, 3], [5, 4]], [3, 4], [2, 2])
    np.testing.assert_array_equal(np.asarray(got.v[0, 0, 3:5]), [-4, -3])
    np.testing.assert_array_equal(np.asarray(got.v[0, 1, 4:6]), [-105, -104])


@pytest.mark.parametrize("seed", range(6))
def test_random_commits_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    accepted = 4
    count = rng.integers(0, accepted + 1, B)
    dst_start = rng.integers(0, S - accepted + 1, B)
    src = np.stack([rng.choice(S, accepted, replace=False) for _ in range(B)])
    _check(src, dst_start, count)


def test_sources_past_the_count_are_ignored():
    # Out-of-range garbage after count is neither read into the cache nor an error.
    _check([[2, 99, -5], [3, 1, 1000]], [6, 0], [1, 0])


def test_prefix_tree_mask_sees_the_prefix_and_the_ancestors():
    spec = tree_lib.branching((2, 1))  # slots: 0 root; 1, 2 its children; 3 <- 1; 4 <- 2
    ancestors = tree_lib.ancestor_mask(jnp.asarray(spec.static_parents()), spec.depth)
    length = jnp.array([3, 5])
    mask = kv_cache.prefix_tree_mask(length, jnp.broadcast_to(ancestors, (B, 5, 5)), S)
    chex.assert_shape(mask, (B, 5, S))
    seen = {  # cache slots each tree slot attends to, by hand (tree slot j at length + j)
        0: [0],
        1: [0, 1],
        2: [0, 2],
        3: [0, 1, 3],
        4: [0, 2, 4],
    }
    for b, n in enumerate([3, 5]):
        for j, tree_slots in seen.items():
            want = np.zeros(S, bool)
            want[:n] = True
            want[[n + t for t in tree_slots]] = True
            np.testing.assert_array_equal(np.asarray(mask[b, j]), want, err_msg=f"row {b} slot {j}")


def test_causal_prefix_mask():
    mask = kv_cache.causal_prefix_mask(jnp.array([2, 0]), 3, 6)
    chex.assert_shape(mask, (2, 3, 6))
    np.testing.assert_array_equal(np.asarray(mask[0]).sum(-1), [3, 4, 5])  # slots <= 2, 3, 4
    np.testing.assert_array_equal(np.asarray(mask[1]).sum(-1), [1, 2, 3])
    assert not bool(mask[0, 0, 3]) and bool(mask[0, 2, 4]) and not bool(mask[0, 2, 5])


def test_set_index_and_capacity():
    cache = kv_cache.set_index(_cache(), np.array([1, 2]))
    assert cache.index.dtype == jnp.int32 and cache.index.tolist() == [1, 2]
    assert kv_cache.capacity(cache) == S


def test_prefill_writes_causally_from_each_rows_index():
    """A forward that records what it is given: tokens at ``index + t``, positions
    ``index + t``, query ``t`` sees slots ``<= index + t``; ``lengths`` sets the new index."""
    seen = {}

    def apply(params, tokens, positions, mask, cache):
        seen.update(positions=positions, mask=mask, index=cache.index)
        logits = jnp.zeros(tokens.shape + (5,)) + params
        return logits, cache._replace(index=cache.index + tokens.shape[1])

    cache = kv_cache.set_index(_cache(), np.array([2, 0]))
    tokens = jnp.ones((B, 3), jnp.int32)
    logits, out = kv_cache.prefill(apply, 1.0, tokens, cache, jnp.array([3, 2]))
    chex.assert_shape(logits, (B, 3, 5))
    np.testing.assert_array_equal(seen["positions"], [[2, 3, 4], [0, 1, 2]])
    np.testing.assert_array_equal(seen["mask"], kv_cache.causal_prefix_mask(cache.index, 3, S))
    np.testing.assert_array_equal(out.index, [5, 2])
    _, out = kv_cache.prefill(apply, 1.0, tokens, cache)
    np.testing.assert_array_equal(out.index, [5, 3])  # no lengths: index + T
