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
  scored position of the round, draft and target (timed on the target's logits along the
  prompt: the top-p threshold's cost depends on the law);
- ``verify``: the method's tree verifier;
- ``commit``: moving the accepted KV entries and appending the emitted tokens;
- ``rest``: the jitted whole step minus all of the above (what fusion across phases saves
  shows up here as a negative number).

The phases are timed apart, so their sum carries the noise of each forward timed alone (on
this project's CPU +-20 ms on a 150 ms call). The share of a round spent outside the model
calls is therefore measured directly: ``overhead`` is the whole jitted step with both
models replaced by a free lookup of real logits (everything else unchanged: drafting,
transforms, verification, commit, on the real caches), timed interleaved with the real
``step``; ``outside_forwards = overhead / step``.
"""

from __future__ import annotations

import dataclasses
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


def interleaved_medians(calls: dict, repeats: int) -> dict:
    """Median seconds of each ``fn(*args)`` in ``calls`` (name -> (fn, args)), round-robin."""
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(v)) for name, v in times.items()}


def _logits_lookup(table, tokens, positions, mask, cache):
    """A model call that costs nothing: rows of ``table`` ``[1, n, V]`` (cycled) as the
    logits of every token; the cache comes back as it went in."""
    del positions, mask
    t, n = tokens.shape[1], table.shape[1]
    # A static slice (no gather, no copy) when the table has enough rows.
    rows = table[0, :t] if t <= n else jnp.concatenate([table[0]] * -(-t // n))[:t]
    return jnp.broadcast_to(rows, tokens.shape + table.shape[-1:]), cache


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

    Also returns ``step`` (the whole jitted step), ``forwards`` (the sum of the model calls
    timed alone), ``overhead`` (the step with free model calls) and ``outside_forwards``
    (``overhead / step``).
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
    out = {}

    draft_phase = jax.jit(engine.draft)
    tree, draft_probs, draft_cache, _ = draft_phase(state, dp, k_draft)
    score = jax.jit(engine.score_tree)
    target_probs, target_cache, _ = score(state, tree, tp)
    verify = jax.jit(engine.verify)
    res = verify(k_verify, tree, target_probs, draft_probs)
    commit = jax.jit(engine.commit)
    probs = jax.jit(engine.probs)

    # The transforms' cost depends on the law (the top-p threshold's work does): time them
    # on the target's real next-token logits along the prompt, cycled to the width needed.
    n = len(prompt)
    text_logits, _ = jax.jit(target.apply)(
        target.params,
        jnp.asarray(prompt, jnp.int32)[None],
        jnp.arange(n, dtype=jnp.int32)[None],
        kv_cache.causal_prefix_mask(jnp.zeros((1,), jnp.int32), n, n),
        target.init_cache(1, n),
    )

    def transform_seconds(width):
        logits = text_logits[:, jnp.arange(width) % n].astype(jnp.float32)
        return median_seconds(probs, state, logits, repeats=repeats)

    # The round without its model calls, measured directly: the same step with both models
    # replaced by a lookup of those logits (caches pass through), timed interleaved with
    # the real step so that background load falls on both alike.
    hollow = dataclasses.replace(
        engine,
        target_apply=_logits_lookup,
        draft_apply=None if engine.draft_apply is None else _logits_lookup,
    )
    reps = -(-(spec.num_nodes + 2) // n)  # enough rows for any call of the round
    table = jnp.concatenate([text_logits.astype(jnp.float32)] * reps, axis=1)
    free = jax.jit(hollow.step)
    calls = {"step": (step, (state, tp, dp)), "overhead": (free, (state, table, table))}
    out.update(interleaved_medians(calls, repeats))

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
    out["outside_forwards"] = out["overhead"] / out["step"]
    return out
