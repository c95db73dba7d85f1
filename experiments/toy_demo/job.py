"""Toy demo job: block efficiency, MBSU and an output-law check for every method.

The draft and target are order-``n`` n-gram tables over a small vocabulary;
the draft mixes the target's table with an unrelated one (``agreement``), both
behind the :class:`rsd_jax.interface.Model` contract (a cache of the tokens seen).
Each method runs ``rounds`` independent rounds from the same context through the
engine every other job uses: one :meth:`rsd_jax.decode.Engine.step` over a batch of
``rounds`` rows, one compiled call. It reports tokens per target call and the
total-variation distance between the first emitted token's empirical law and the
target's (which must be at sampling-noise level: these methods are lossless).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.toy_demo.settings import Settings
from models import toy
from rsd_jax import decode, metrics
from rsd_jax import generation as gen

PREFIX = (1, 2)  # the prompt; its last id is the root of every round


def one_round(method, target, draft, keys) -> dict:
    """One engine round per key, all from :data:`PREFIX`: the emitted tokens ``[R, L+1]``
    (-1 past the emitted ones), ``num_emitted`` and ``num_accepted`` ``[R]``."""
    engine = decode.Engine(
        method=method,
        target_apply=target.apply,
        draft_apply=draft.apply,
        vocab_size=target.vocab_size,
    )
    rows = keys.shape[0]
    prompts = jnp.tile(jnp.asarray(PREFIX, jnp.int32)[None], (rows, 1))
    lengths = np.full((rows,), len(PREFIX), np.int32)
    width = method.spec.depth + 1
    state = gen.init_state(engine, target, draft, prompts, lengths, keys, width)
    state = jax.device_get(gen.jitted_step(engine)(state, target.params, draft.params))
    emitted = np.asarray(state.counters.generated)
    tokens = np.asarray(state.tokens)[:, len(PREFIX) : len(PREFIX) + width]
    tokens = np.where(np.arange(width)[None] < emitted[:, None], tokens, -1)
    accepted = np.argmax(np.asarray(state.counters.accepted_hist), axis=1)
    return dict(tokens=tokens, num_emitted=emitted, num_accepted=accepted)


def run(settings: Settings) -> list[dict]:
    """Runs the demo; returns one row of metrics per method (AR first)."""
    s = settings
    rng = np.random.default_rng(s.seed)
    target, draft = toy.random_pair(rng, s.vocab, s.order, alpha=s.alpha, agreement=s.agreement)
    q_first = target[toy.context_of(PREFIX, s.order, s.vocab)]
    # E|empirical - p| ~ sqrt(2 p (1 - p) / (pi n)) per id, for an exact sampler.
    tv_noise = 0.5 * float(np.sum(np.sqrt(2 * q_first * (1 - q_first) / (np.pi * s.rounds))))
    rows = [
        dict(method="AR", shape="-", budget=0, eta=1.0, mbsu=1.0, tv_first=float("nan"))
        | dict(tv_noise=tv_noise)
    ]
    keys = jax.random.split(jax.random.PRNGKey(s.seed), s.rounds)
    target_model, draft_model = toy.as_model(target), toy.as_model(draft)
    for method in settings.methods:
        start = time.perf_counter()
        res = one_round(method, target_model, draft_model, keys)
        first = np.bincount(res["tokens"][:, 0], minlength=s.vocab) / s.rounds
        eta = metrics.block_efficiency(res["num_emitted"].sum(), s.rounds)
        accept_depth = [
            float(np.mean(res["num_accepted"] >= d)) for d in range(1, method.spec.depth + 1)
        ]
        rows.append(
            dict(
                method=method.name,
                shape=method.spec.describe(),
                budget=method.budget,
                eta=eta,
                mbsu=metrics.mbsu(eta, s.draft_cost, method.draft_calls),
                tv_first=0.5 * float(np.abs(first - q_first).sum()),
                accept_by_depth=accept_depth,
                seconds=time.perf_counter() - start,
            )
        )
    return rows


def format_table(rows: list[dict], rounds: int) -> str:
    """Markdown table of the demo's rows."""
    lines = [
        "| method | shape | B | block efficiency | MBSU | TV(first token, q) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        tv = "-" if np.isnan(r["tv_first"]) else f"{r['tv_first']:.4f}"
        lines.append(
            f"| {r['method']} | {r['shape']} | {r['budget']} | {r['eta']:.3f} | "
            f"{r['mbsu']:.3f} | {tv} |"
        )
    lines.append(
        f"\nExpected TV of an exact sampler from sampling noise alone ({rounds} rounds): "
        f"{rows[0]['tv_noise']:.4f}."
    )
    return "\n".join(lines)
