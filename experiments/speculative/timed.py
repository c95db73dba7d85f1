"""Timed generation of one prompt with one method (the measurement of the ``speculative`` job).

Timing: before a method's first timed prompt its programs are compiled by a warm-up
(prefill + a decoding loop that runs no round), so compile time is not measured. Each
record's ``seconds`` is wall-clock from prefill to the last round, inclusive (split into
``prefill_seconds`` and ``decode_seconds``; ``round_seconds`` is decode time per target
call; ``python -m experiments.bench.decode`` breaks a round into its phases).
Randomness: the key of a prompt is ``fold_in(PRNGKey(seed), crc32(prompt key))`` for every
method (common random numbers), so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import time
import zlib

import jax
import numpy as np

from experiments.speculative import sources
from models.kernels import nucleus
from rsd_jax import decode, transforms
from rsd_jax import generation as gen

TIMING_FIELDS = ("seconds", "prefill_seconds", "decode_seconds", "round_seconds")


def prompt_rng_key(seed: int, prompt_key: str) -> jax.Array:
    """The key of a prompt, the same for every method (common random numbers)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(prompt_key.encode()) >> 1)


def bucket_length(prompts) -> int:
    """The padded prompt length: the longest prompt rounded up to a multiple of 32 (>= 32)."""
    longest = max(len(p.ids) for p in prompts)
    return max(32, -(-longest // 32) * 32)


class TimedGenerator:
    """Generates one prompt with one method, timed (compiles on a warm-up first)."""

    def __init__(
        self,
        bundle: sources.Bundle,
        method,
        bucket: int,
        max_new: int,
        layout=None,
        probes: bool = False,
    ):
        self.bundle, self.method, self.bucket, self.max_new = bundle, method, bucket, max_new
        self.probes = probes
        self.layout = layout  # rsd_jax.sharding.Layout when running on a mesh
        draft = bundle.draft if method.draft_calls > 0 else None
        self.draft = draft
        self.engine = decode.Engine(
            method=method,
            target_apply=bundle.target.apply,
            draft_apply=None if draft is None else draft.apply,
            vocab_size=bundle.target.vocab_size,
            valid_vocab_size=bundle.valid_vocab_size,
            eos_id=bundle.eos_id,
            probes=probes,
            # The top-p kernel is a CPU custom call with no sharding rule: single device only.
            nucleus=nucleus.threshold if layout is None else None,
        )
        self.draft_params = None if draft is None else draft.params

    def _init(self, prompt: sources.EncodedPrompt, key):
        padded, lengths = gen.pad_prompts([prompt.ids], self.bucket)
        sampling = transforms.SamplingParams(temperature=prompt.temperature, top_p=prompt.top_p)
        b = self.bundle
        return gen.init_state(
            self.engine,
            b.target,
            self.draft,
            padded,
            lengths,
            key[None],
            self.max_new,
            sampling,
            self.layout,
        )

    def warm_up(self, prompt: sources.EncodedPrompt) -> None:
        state = self._init(prompt, jax.random.PRNGKey(0))
        state = state._replace(done=~state.done)  # the loop compiles but runs no round
        jax.block_until_ready(
            gen.run(self.engine, state, self.bundle.target.params, self.draft_params, self.layout)
        )

    def __call__(self, prompt: sources.EncodedPrompt, key) -> dict:
        start = time.perf_counter()
        state = jax.block_until_ready(self._init(prompt, key))
        mid = time.perf_counter()
        state = gen.run(
            self.engine, state, self.bundle.target.params, self.draft_params, self.layout
        )
        gen.check_finished(state)
        state = jax.block_until_ready(state)
        end = time.perf_counter()
        tokens = gen.generated_tokens(state, self.bundle.eos_id)[0]
        c = jax.tree.map(lambda x: np.asarray(x)[0], state.counters)
        tok = self.bundle.tokenizer
        extra = {}
        if self.probes and self.method.draft_calls > 0:
            # Exact sums over rounds (rsd_jax.probes): expected tokens of walk / traversal.
            walk_sum, tv_sum = (float(x) for x in c.probes.expected_tokens)
            extra = dict(
                expected_tokens_walk=walk_sum,
                expected_tokens_traversal=None if np.isnan(tv_sum) else tv_sum,
                rank_accept=np.asarray(c.probes.rank_accept, float).tolist(),
                rank_count=np.asarray(c.probes.rank_count, int).tolist(),
            )
        return extra | dict(
            tokens=[int(t) for t in tokens],
            text=None if tok is None else tok.decode(tokens, skip_special=True),
            num_tokens=len(tokens),
            generated=int(c.generated),
            target_calls=int(c.target_calls),
            draft_calls=int(c.draft_calls),
            accepted_hist=[int(x) for x in c.accepted_hist],
            nodes_scored=int(c.nodes_scored),
            nonfinite_draft_rounds=int(c.nonfinite_draft),
            zero_prob_draft_rounds=int(c.zero_prob_draft),
            prompt_tokens=len(prompt.ids),
            prefill_seconds=mid - start,
            decode_seconds=end - mid,
            round_seconds=(end - mid) / max(int(c.target_calls), 1),
            seconds=end - start,
        )
