"""Timed generation of a batch of prompts with one method (the ``speculative`` job's measure).

Timing: before a method's first timed batch its programs are compiled by a warm-up
(prefill + a decoding loop that runs no round), so compile time is not measured. A batch's
wall-clock runs from prefill to the last round, inclusive; each of its ``batch_size``
records gets an equal share as ``seconds`` (split into ``prefill_seconds`` and
``decode_seconds``; ``batch_seconds`` is the whole; ``round_seconds`` is decode time per
round of the batch; ``python -m experiments.bench.decode`` breaks a round into its phases).
With one prompt per batch (the default) a record's seconds are its own.
Randomness: the key of a prompt is ``fold_in(PRNGKey(seed), crc32(prompt key))`` for every
method (common random numbers), so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from experiments.speculative import sources
from models.kernels import nucleus
from rsd_jax import decode, transforms
from rsd_jax import generation as gen

TIMING_FIELDS = (
    "seconds", "prefill_seconds", "decode_seconds", "round_seconds", "batch_seconds",
)  # fmt: skip


def prompt_rng_key(seed: int, prompt_key: str) -> jax.Array:
    """The key of a prompt, the same for every method (common random numbers)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(prompt_key.encode()) >> 1)


def bucket_length(prompts) -> int:
    """The padded prompt length: the longest prompt rounded up to a multiple of 32 (>= 32)."""
    longest = max(len(p.ids) for p in prompts)
    return max(32, -(-longest // 32) * 32)


class TimedGenerator:
    """Generates a batch of prompts with one method, timed (compiles on a warm-up first).

    A batch shares its sampling setting (the state holds one). Each row keeps its own key,
    so its tokens are those of the prompt decoded alone; its record's ``seconds`` is its
    share of the batch's wall-clock (``batch_seconds / batch_size``), so summed seconds
    give the batch's throughput. On a mesh spanning several processes the outputs are read
    back replicated, on every process.
    """

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

    def _init(self, prompts, keys):
        padded, lengths = gen.pad_prompts([p.ids for p in prompts], self.bucket)
        first = prompts[0]
        sampling = transforms.SamplingParams(temperature=first.temperature, top_p=first.top_p)
        b = self.bundle
        return gen.init_state(
            self.engine, b.target, self.draft, padded, lengths, keys, self.max_new, sampling,
            self.layout,
        )  # fmt: skip

    def _run(self, state):
        return gen.run(
            self.engine, state, self.bundle.target.params, self.draft_params, self.layout
        )

    def _host(self, state):
        """The state's read-back fields, whole on this process."""
        if self.layout is None:
            return state
        fields = ("tokens", "prompt_len", "max_new", "counters", "done", "round")
        return state._replace(**self.layout.replicated({k: getattr(state, k) for k in fields}))

    def warm_up(self, prompts) -> None:
        """Compiles prefill and loop for this batch's shapes, running no round."""
        prompts = _as_list(prompts)
        keys = jnp.stack([jax.random.PRNGKey(0)] * len(prompts))
        state = self._init(prompts, keys)
        state = state._replace(done=~state.done)  # the loop compiles but runs no round
        jax.block_until_ready(self._run(state))

    def __call__(self, prompts, keys) -> list[dict] | dict:
        """Records of ``prompts`` (a list, or one prompt: one record) with per-row ``keys``
        (``[B, 2]``, or one key)."""
        single = isinstance(prompts, sources.EncodedPrompt)
        prompts = _as_list(prompts)
        keys = jnp.asarray(keys).reshape(len(prompts), -1)
        start = time.perf_counter()
        state = jax.block_until_ready(self._init(prompts, keys))
        mid = time.perf_counter()
        host = self._host(self._run(state))
        gen.check_finished(host)
        host = jax.block_until_ready(host)
        end = time.perf_counter()
        tokens = gen.generated_tokens(host, self.bundle.eos_id)
        counters = jax.tree.map(np.asarray, host.counters)
        size = len(prompts)
        shared = dict(
            prefill_seconds=(mid - start) / size,
            decode_seconds=(end - mid) / size,
            seconds=(end - start) / size,
            batch_size=size,
            batch_seconds=end - start,
            round_seconds=(end - mid) / max(int(np.max(counters.target_calls)), 1),
        )
        out = [
            self._record(p, toks, jax.tree.map(lambda x, i=i: x[i], counters)) | shared
            for i, (p, toks) in enumerate(zip(prompts, tokens, strict=True))
        ]
        return out[0] if single else out

    def _record(self, prompt, tokens, c) -> dict:
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
        )


def _as_list(prompts) -> list:
    return [prompts] if isinstance(prompts, sources.EncodedPrompt) else list(prompts)
