"""Public generation API (:func:`generate`) and the two drivers of the decoding step.

The models are :class:`rsd_jax.interface.Model` (the forward and cache contract);
prompts are padded and checked by :mod:`rsd_jax.prompts`.

* :func:`run` drives :meth:`Engine.step` with a ``lax.while_loop`` until every
  row is done: one compiled program, no per-token Python (speed).
* :func:`iterate` drives the jitted step from Python, one round at a time
  (streaming, per-round metrics).

Both jit with the state **donated** (its buffers are reused in place), and both
are cached per :class:`~rsd_jax.decode.Engine`, so repeated calls with the same
shapes never retrace. With a :class:`~rsd_jax.sharding.Layout` (or ``mesh=`` in
:func:`generate`) they run the same step SPMD over a device mesh.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsd_jax import decode, kv_cache, methods, sharding, transforms
from rsd_jax import probes as probe_lib
from rsd_jax.interface import BATCH_AXIS, Model, map_cache
from rsd_jax.prompts import check_context, check_token_ids, pad_prompts

Array = jax.Array
_DEFAULT_SAMPLING = transforms.SamplingParams()


class Result(NamedTuple):
    """Output of :func:`generate`.

    Attributes:
      tokens: per prompt, the generated ids (at most ``max_new_tokens``, ending
        at the first EOS if any).
      counters: :class:`~rsd_jax.decode.Counters` as numpy arrays, per row.
      state: the final decoding state.
    """

    tokens: list[list[int]]
    counters: decode.Counters
    state: decode.DecodeState


@functools.lru_cache(maxsize=64)
def _prefill_fn(apply, layout=None, spec=None):
    def prefill(params, cache, prompts):
        start = jnp.zeros((prompts.shape[0],), jnp.int32)
        _, cache = kv_cache.prefill(apply, params, prompts, kv_cache.set_index(cache, start))
        if layout is not None:
            cache = jax.lax.with_sharding_constraint(cache, layout.cache_shardings(cache, spec))
        return cache

    return jax.jit(prefill, donate_argnums=(1,))


def init_state(
    engine: decode.Engine,
    target: Model,
    draft: Model | None,
    prompts: Array,
    prompt_len: Array,
    keys: Array,
    max_new_tokens: int,
    sampling: transforms.SamplingParams = _DEFAULT_SAMPLING,
    layout: sharding.Layout | None = None,
) -> decode.DecodeState:
    """Allocates buffers and caches and prefills both models with the prompts.

    Args:
      engine: static step configuration.
      target, draft: the models (draft None for AR).
      prompts: ``[B, P]`` right-padded ids; ``P`` is the bucket.
      prompt_len: ``[B]`` true lengths (>= 2 with a draft: the draft re-reads
        the last committed token each round; >= 1 for AR). Ids within them must be in
        ``[0, target.vocab_size)`` (ValueError otherwise); a prompt whose length plus
        ``max_new_tokens`` passes a model's ``max_positions`` draws a warning.
      keys: ``[B, 2]`` per-row PRNG keys.
      max_new_tokens: generation budget (static: sizes the buffers).
      sampling: temperature / top-k / top-p, shared by draft and target.
      layout: place the state on a mesh (caches created sharded; the models'
        params should already be placed, see :func:`rsd_jax.sharding.place_model`).
    """
    batch, bucket = prompts.shape
    if layout is not None:
        layout.check_batch(batch)
    lengths = np.asarray(prompt_len)
    minimum = 2 if engine.method.spec.depth > 0 else 1
    if lengths.min() < minimum:
        raise ValueError(f"prompts need at least {minimum} tokens for {engine.method.name}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_token_ids(
        [p[:n] for p, n in zip(np.asarray(prompts), lengths, strict=True)], target.vocab_size
    )
    drafting = engine.method.spec.depth > 0
    check_context(
        (("target", target), ("draft", draft if drafting else None)),
        int(lengths.max()),
        max_new_tokens,
    )
    buffer, capacity = engine.capacities(bucket, max_new_tokens)
    tokens = jnp.zeros((batch, buffer), jnp.int32).at[:, :bucket].set(prompts)

    def prefilled(model, spec):
        if layout is None:
            return _prefill_fn(model.apply)(
                model.params, model.init_cache(batch, capacity), prompts
            )
        cache = layout.new_cache(model.init_cache, batch, capacity, spec)
        return _prefill_fn(model.apply, layout, spec)(model.params, cache, prompts)

    target_cache = prefilled(target, None if layout is None else layout.target_cache)
    draft_cache = None
    if engine.method.spec.depth > 0:
        draft_cache = prefilled(draft, None if layout is None else layout.draft_cache)

    def zeros():  # distinct buffers: the state is donated, so no two fields may alias
        return jnp.zeros((batch,), jnp.int32)

    state = decode.DecodeState(
        tokens=tokens,
        length=jnp.asarray(prompt_len, jnp.int32) - 1,
        prompt_len=jnp.array(prompt_len, jnp.int32, copy=True),  # donated: never alias inputs
        max_new=jnp.full((batch,), max_new_tokens, jnp.int32),
        done=jnp.zeros((batch,), jnp.bool_),
        key=jnp.array(keys, copy=True),
        round=zeros(),
        target_cache=target_cache,
        draft_cache=draft_cache,
        counters=decode.Counters(
            target_calls=zeros(),
            draft_calls=zeros(),
            generated=zeros(),
            accepted_hist=jnp.zeros((batch, engine.method.spec.depth + 1), jnp.int32),
            nodes_scored=zeros(),
            nonfinite_target=zeros(),
            nonfinite_draft=zeros(),
            zero_prob_draft=zeros(),
            probes=probe_lib.zeros(engine.method.spec, batch),
        ),
        temperature=jnp.float32(sampling.temperature),
        top_k=jnp.int32(sampling.top_k),
        top_p=jnp.float32(sampling.top_p),
    )
    return state if layout is None else layout.place(state)


def repeat_rows(state: decode.DecodeState, repeats: int, keys: Array) -> decode.DecodeState:
    """Repeats every row of a (prefilled) state ``repeats`` times with new per-row keys.

    Draws many samples from one prompt without prefilling it once per sample.

    Args:
      state: a state from :func:`init_state` (typically one row).
      repeats: copies per row.
      keys: ``[B * repeats, 2]`` keys of the new rows.
    """

    def rep(x, axis):
        return jnp.repeat(x, repeats, axis=axis)

    def rep_cache(cache):
        if cache is None:
            return None
        return map_cache(lambda x: rep(x, BATCH_AXIS), cache, lambda index: rep(index, 0))

    batched = {
        k: rep(v, 0)
        for k, v in state._asdict().items()
        if k not in ("target_cache", "draft_cache", "counters", "temperature", "top_k", "top_p")
    }
    batched["key"] = jnp.array(keys, copy=True)
    for k in ("temperature", "top_k", "top_p"):  # copies: the new state will be donated
        batched[k] = jnp.array(getattr(state, k), copy=True)
    return state._replace(
        **batched,
        target_cache=rep_cache(state.target_cache),
        draft_cache=rep_cache(state.draft_cache),
        counters=jax.tree.map(lambda x: rep(x, 0), state.counters),
    )


@functools.lru_cache(maxsize=64)
def jitted_step(engine: decode.Engine, layout: sharding.Layout | None = None):
    """``step(state, target_params, draft_params) -> state``, jitted, state donated.

    With a ``layout`` the state is held to it in and out (params keep their placement).
    """
    step = engine.step if layout is None else layout.wrap(engine.step)
    return jax.jit(step, donate_argnums=(0,))


@functools.lru_cache(maxsize=64)
def _loop_fn(engine: decode.Engine, layout: sharding.Layout | None = None):
    step = engine.step if layout is None else layout.wrap(engine.step)

    def loop(state, target_params, draft_params):
        return jax.lax.while_loop(unfinished, lambda s: step(s, target_params, draft_params), state)

    return jax.jit(loop, donate_argnums=(0,))


def unfinished(state: decode.DecodeState) -> Array:
    """Whether a row is still to be stepped: not done and with rounds left.

    Every round emits at least one token per active row, so a row needs at most
    ``max_new`` rounds; the bound only matters if a round ever emitted nothing (a bug),
    which would otherwise loop forever. :func:`check_finished` reports such rows.
    """
    return jnp.any(~state.done & (state.round < state.max_new))


class NonFiniteLogitsError(FloatingPointError):
    """The target's logits held a NaN, a ``+inf`` or a position with no finite logit: the
    row's law is undefined (``-inf`` alone is probability 0 and never an error)."""


NAMED_ROWS = 5  # an error names this many rows, then counts the rest


def _rows_text(rows: np.ndarray, describe) -> str:
    """``describe(row)`` of the first :data:`NAMED_ROWS` rows, then how many more."""
    text = ", ".join(describe(b) for b in rows[:NAMED_ROWS])
    more = len(rows) - NAMED_ROWS
    return text + (f" and {more} more" if more > 0 else "")


def check_finished(state: decode.DecodeState) -> None:
    """Raises for rows stopped by target logits that were not a law
    (:class:`NonFiniteLogitsError`) or that ran out of rounds before finishing
    (RuntimeError); the message counts the rows and names the first few."""
    bad = np.flatnonzero(np.asarray(state.counters.nonfinite_target))
    if bad.size:
        rounds = np.asarray(state.round)
        rows = _rows_text(bad, lambda b: f"row {b} in round {rounds[b]}")
        raise NonFiniteLogitsError(
            f"the target model's logits held a NaN, a +inf or a position without a finite "
            f"logit in {bad.size} of {rounds.size} rows ({rows}); those rows were stopped "
            "and emitted nothing from that round on. Check the model's weights (e.g. a "
            "damaged or overflowing conversion) and the dtype"
        )
    stuck = np.flatnonzero(~np.asarray(state.done))
    if stuck.size:
        rounds, gen = np.asarray(state.round), np.asarray(state.counters.generated)
        rows = _rows_text(stuck, lambda b: f"row {b}: {gen[b]} tokens in {rounds[b]} rounds")
        raise RuntimeError(
            f"decoding stopped without finishing ({rows}): a round emitted nothing, which "
            "a correct engine never does; please report it"
        )


def run(engine, state, target_params, draft_params, layout=None) -> decode.DecodeState:
    """Runs rounds in one compiled ``lax.while_loop`` until every row is done or out of
    rounds (see :func:`unfinished`; state donated)."""
    return _loop_fn(engine, layout)(state, target_params, draft_params)


def iterate(
    engine, state, target_params, draft_params, layout=None
) -> Iterator[decode.DecodeState]:
    """Yields the state after each round until every row is done (state donated)."""
    step = jitted_step(engine, layout)
    while bool(unfinished(state)):
        state = step(state, target_params, draft_params)
        yield state


def generated_tokens(state: decode.DecodeState, eos_id: int = -1) -> list[list[int]]:
    """Per row, the generated ids, cut at ``max_new`` and after the first EOS."""
    tokens = np.asarray(state.tokens)
    start = np.asarray(state.prompt_len)
    total = np.minimum(np.asarray(state.counters.generated), np.asarray(state.max_new))
    out = []
    for row, s, g in zip(tokens, start, total, strict=True):
        gen = row[s : s + g].tolist()
        if eos_id >= 0 and eos_id in gen:
            gen = gen[: gen.index(eos_id) + 1]
        out.append(gen)
    return out


def generate(
    target: Model,
    draft: Model | None,
    prompts: Sequence[Sequence[int]],
    method: methods.Method | str = "rsd_s:3x2",
    *,
    key: Array,
    max_new_tokens: int = 64,
    sampling: transforms.SamplingParams = _DEFAULT_SAMPLING,
    eos_id: int = -1,
    valid_vocab_size: int | None = None,
    keys: Array | None = None,
    bucket: int | None = None,
    driver: str = "while",
    probes: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    nucleus=None,
) -> Result:
    """Generates from ``target`` with any lossless method, drafting with ``draft``.

    Args:
      target: the target model; its law (after ``sampling``) is what comes out.
      draft: the draft model (same tokenizer); None only for AR.
      prompts: token-id lists (different lengths are fine), ids in
        ``[0, target.vocab_size)`` (ValueError naming the first other id).
      method: a :class:`~rsd_jax.methods.Method`, a compact string such as
        ``"rsd_s:3x2"`` (see :func:`rsd_jax.methods.parse`), or ``"ar"``.
      key: PRNG key; row ``i`` uses ``fold_in(key, i)`` unless ``keys`` is given.
      max_new_tokens: tokens to generate per prompt.
      sampling: temperature (0 = greedy), top-k, top-p for draft and target.
      eos_id: stop a row at this id (-1: never).
      valid_vocab_size: ids at or beyond it get probability 0.
      keys: ``[B, 2]`` explicit per-row keys (batch-invariant outputs).
      bucket: pad prompts to this length (prompts in one bucket share a compile).
      driver: ``"while"`` (one compiled loop) or ``"python"`` (round by round).
      probes: also accumulate the exact diagnostics of :mod:`rsd_jax.probes`
        in ``Result.counters.probes`` (slower; not for timing).
      mesh: run SPMD on a ``("data", "model")`` mesh (:func:`rsd_jax.sharding.make_mesh`):
        the batch (``len(prompts)``, a multiple of the data axis) is split over
        ``"data"``, the models by their ``Model.sharding`` rules over ``"model"``.
        Params are placed here; place them once with
        :func:`rsd_jax.sharding.place_model` to avoid a copy per call.
      nucleus: optional replacement for the top-p threshold (``Engine.nucleus``), e.g.
        ``models.kernels.nucleus.threshold`` on a CPU.

    Returns:
      A :class:`Result`.
    """
    if isinstance(method, str):
        method = methods.parse(method)
    if draft is not None and draft.vocab_size != target.vocab_size:
        raise ValueError(
            f"draft vocabulary {draft.vocab_size} != target vocabulary {target.vocab_size}"
        )
    if driver not in ("while", "python"):
        raise ValueError(f"driver must be 'while' or 'python', got {driver!r}")
    check_token_ids(prompts, target.vocab_size)  # before padding casts them to int32
    engine = decode.Engine(
        method=method,
        target_apply=target.apply,
        draft_apply=None if draft is None else draft.apply,
        vocab_size=target.vocab_size,
        valid_vocab_size=valid_vocab_size,
        eos_id=eos_id,
        probes=probes,
        nucleus=nucleus,
    )
    layout = None
    if mesh is not None:
        layout = sharding.Layout.for_models(mesh, target, draft)
        layout.check_batch(len(prompts))
        target, draft = sharding.place_model(target, mesh), sharding.place_model(draft, mesh)
    padded, lengths = pad_prompts(prompts, bucket)
    if keys is None:
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(prompts)))
    state = init_state(
        engine, target, draft, padded, lengths, keys, max_new_tokens, sampling, layout
    )
    draft_params = None if draft is None else draft.params
    if driver == "while":
        state = run(engine, state, target.params, draft_params, layout)
    else:
        for new_state in iterate(engine, state, target.params, draft_params, layout):
            state = new_state
    check_finished(state)
    host = state  # what is read back: whole on every host where the batch is split
    if layout is not None:
        fields = ("tokens", "prompt_len", "max_new", "counters")
        host = state._replace(**layout.replicated({k: getattr(state, k) for k in fields}))
    counters = jax.tree.map(np.asarray, host.counters)
    return Result(tokens=generated_tokens(host, eos_id), counters=counters, state=state)
