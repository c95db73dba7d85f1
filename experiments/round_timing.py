"""Where a round's time goes: each phase of `Engine.step` timed alone, and the tree cost curve.

Every phase is jitted on its own (no donation, so the same inputs can be timed again) and
run on the state of a real generation a few rounds in, so shapes and values are those of a
run. Times are medians of `repeats` calls after a warm-up call. The phases:

- ``draft_forwards``: the draft model's calls of one round (level 0 feeds two tokens, level
  l >= 1 that level's nodes), at the exact shapes and cache size;
- ``draft_sampling``: the rest of the draft phase (Gumbel-Top-k / beam search, tree
  bookkeeping), i.e. the jitted draft phase minus its forwards and its transforms;
- ``target_forward``: the target's one call over root + all nodes;
- ``transforms``: logits -> sampling law (temperature, top-p, padding mask) for every
  scored position of the round, draft and target;
- ``verify``: the method's tree verifier;
- ``commit``: moving the accepted KV entries and appending the emitted tokens;
- ``rest``: the jitted whole step minus all of the above (what fusion across phases saves
  shows up here as a negative number).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from rsd_jax import decode, kv_cache
from rsd_jax import generation as gen

PHASES = (
    "draft_forwards",
    "draft_sampling",
    "target_forward",
    "transforms",
    "verify",
    "commit",
    "rest",
)


def median_seconds(fn, *args, repeats: int = 5) -> float:
    """Median wall time of ``fn(*args)`` over ``repeats`` calls after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def tree_cost_curve(model, prefix: int, capacity: int, widths, repeats: int = 5) -> dict:
    """Seconds of one forward over ``T`` new tokens after ``prefix`` cached ones, per ``T``.

    The T tokens form a tree (each attends the prefix and its ancestors, chain-shaped here:
    the mask's shape does not change the cost). Widths are timed interleaved, round-robin,
    so that background load falls on all of them alike.
    """
    fwd = jax.jit(model.apply)
    cache = model.init_cache(1, capacity)
    cache = kv_cache.set_index(cache, jnp.array([prefix], jnp.int32))
    calls = {}
    for t in widths:
        tokens = jnp.full((1, t), 7, jnp.int32)
        positions = prefix + jnp.arange(t, dtype=jnp.int32)[None]
        mask = kv_cache.causal_prefix_mask(jnp.array([prefix], jnp.int32), t, capacity)
        args = (model.params, tokens, positions, mask, cache)
        jax.block_until_ready(fwd(*args))
        calls[t] = args
    times = {t: [] for t in widths}
    for _ in range(repeats):
        for t, args in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fwd(*args))
            times[t].append(time.perf_counter() - start)
    return {t: float(np.median(v)) for t, v in times.items()}


def _forward_seconds(model, width: int, capacity: int, repeats: int) -> float:
    fwd = jax.jit(model.apply)
    cache = model.init_cache(1, capacity)
    tokens = jnp.zeros((1, width), jnp.int32)
    mask = kv_cache.causal_prefix_mask(jnp.zeros((1,), jnp.int32), width, capacity)
    return median_seconds(fwd, model.params, tokens, tokens, mask, cache, repeats=repeats)


def round_breakdown(
    engine: decode.Engine, target, draft, prompt, max_new: int, sampling, repeats: int = 5
) -> dict:
    """Seconds per phase of one round of ``engine`` (batch 1), see the module docstring.

    Also returns ``step`` (the whole jitted step) and ``forwards`` (the sum of the model
    calls), so that ``rest`` and the overhead fraction can be read off.
    """
    spec = engine.method.spec
    padded, lengths = gen.pad_prompts([prompt])
    keys = jax.random.PRNGKey(0)[None]
    state = gen.init_state(engine, target, draft, padded, lengths, keys, max_new, sampling)
    tp, dp = target.params, None if draft is None else draft.params
    step = jax.jit(engine.step)
    for _ in range(2):  # a few rounds in: a realistic cache and prefix
        state = step(state, tp, dp)
    capacity = kv_cache.capacity(state.target_cache)
    k_draft = jax.random.split(jax.random.PRNGKey(1), 1)
    k_verify = jax.random.split(jax.random.PRNGKey(2), 1)
    out = {"step": median_seconds(step, state, tp, dp, repeats=repeats)}

    draft_phase = jax.jit(engine.draft)
    tree, draft_probs, draft_cache, _ = draft_phase(state, dp, k_draft)
    score = jax.jit(engine.score_tree)
    target_probs, target_cache, _ = score(state, tree, tp)
    verify = jax.jit(engine.verify)
    res = verify(k_verify, tree, target_probs, draft_probs)
    commit = jax.jit(engine.commit)
    probs = jax.jit(engine.probs)
    vocab = engine.vocab_size

    def transform_seconds(width):
        logits = jnp.zeros((1, width, vocab), jnp.float32).at[..., 3].set(2.0)
        return median_seconds(probs, state, logits, repeats=repeats)

    out["target_forward"] = _forward_seconds(target, spec.num_nodes + 1, capacity, repeats)
    out["transforms"] = transform_seconds(spec.num_nodes + 1)
    out["draft_forwards"] = 0.0
    out["draft_sampling"] = 0.0
    if spec.depth > 0:
        dcap = kv_cache.capacity(state.draft_cache)
        widths = [2] + [spec.level_sizes[lvl - 1] for lvl in range(1, spec.depth)]
        draft_transforms = transform_seconds(1) + sum(transform_seconds(w) for w in widths[1:])
        out["draft_forwards"] = sum(_forward_seconds(draft, w, dcap, repeats) for w in widths)
        phase = median_seconds(draft_phase, state, dp, k_draft, repeats=repeats)
        out["draft_sampling"] = phase - out["draft_forwards"] - draft_transforms
        out["transforms"] += draft_transforms
    out["verify"] = median_seconds(verify, k_verify, tree, target_probs, draft_probs)
    out["commit"] = median_seconds(commit, state, res, target_cache, draft_cache)
    out["forwards"] = out["draft_forwards"] + out["target_forward"]
    out["rest"] = out["step"] - sum(out[p] for p in PHASES if p != "rest")
    return out
