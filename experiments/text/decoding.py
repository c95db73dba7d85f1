"""The round loop behind the text front door: a batch of prompts advanced one engine round at a
time, each row cut at its EOS, its token budget and its stop strings.

Rows hold their prompt ids and the tokens so far; a one-token prompt, which the engine's
drafts cannot start from (they re-read the last prompt token), first gets one token from
the target alone (AR, exact), then the method continues.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from experiments.text.results import Completion, Request, Stats
from rsd_jax import generation as gen
from rsd_jax import methods

if TYPE_CHECKING:
    from experiments.text.generator import TextGenerator

BUCKET = 32  # prompts are padded to a multiple of this: one compiled step per bucket
_AR = methods.parse("ar")


class Decoding:
    """One batch's generation, advanced a round at a time by iterating :meth:`rounds`.

    Attributes:
      rows: per prompt, its prompt ids, tokens so far, counters and finish reason.
    """

    def __init__(self, generator: TextGenerator, ids, req: Request, keys=None):
        if keys is None:
            base = jax.random.PRNGKey(req.seed)
            keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(len(ids)))
        self.g, self.req, self.keys = generator, req, np.asarray(keys)
        self.rows = [_Row(list(p), generator.budget(len(p), req.max_new_tokens)) for p in ids]
        self.start = self.end = None
        self.method = None  # the method of the phase running (AR first for 1-token prompts)

    def rounds(self) -> Iterator[None]:
        """Yields after every round of the batch (prefill and compilation before the first)."""
        self.start = time.perf_counter()
        rows, keys, req = self.rows, self.keys, self.req
        if req.method.spec.depth > 0:
            # The engine's drafts re-read the last prompt token, so a prompt needs two:
            # a one-token prompt's first token comes from the target alone (exact).
            short = [i for i, r in enumerate(rows) if len(r.prompt) == 1]
            if short:
                first = np.stack([np.asarray(jax.random.fold_in(keys[i], 1)) for i in short])
                yield from self._phase(_AR, [rows[i] for i in short], first, cap=1)
        todo = [i for i, r in enumerate(rows) if r.finish is None]
        if todo:
            yield from self._phase(req.method, [rows[i] for i in todo], keys[todo])
        self.end = time.perf_counter()

    def completions(self) -> list[Completion]:
        """Each row's :class:`Completion` (so far, if the rounds were left early)."""
        end = self.end or time.perf_counter()
        seconds = end - (self.start or end)
        tok, stop = self.g.tokenizer, self.req.stop
        return [r.completion(tok, stop, seconds) for r in self.rows]

    def _phase(self, method, rows, keys, cap: int | None = None) -> Iterator[None]:
        """Decodes ``rows`` (their prompt plus tokens so far) with ``method`` as one batch,
        one round per step of the iteration, appending to each row; stops rows at EOS, at
        their budget and at stop strings."""
        engine = self.g.engine(method)
        b, req, layout = self.g.bundle, self.req, self.g.layout
        self.method = method
        real = len(rows)
        if layout is not None and real % layout.data:  # pad to the data axis: copies, unread
            extra = layout.data - real % layout.data
            rows = rows + [rows[-1].copy() for _ in range(extra)]
            keys = np.concatenate([np.asarray(keys)] + [np.asarray(keys)[-1:]] * extra)
        prompts = [r.prompt + r.tokens for r in rows]
        budgets = [min(r.budget - len(r.tokens), cap or r.budget) for r in rows]
        longest = max(len(p) for p in prompts)
        bucket = max(BUCKET, -(-longest // BUCKET) * BUCKET)
        padded, lengths = gen.pad_prompts(prompts, bucket)
        draft = b.draft if method.spec.depth > 0 else None
        keys = jnp.asarray(keys)
        state = gen.init_state(
            engine, b.target, draft, padded, lengths, keys, max(budgets), req.sampling, layout
        )
        state = _placed(layout, state._replace(max_new=jnp.asarray(budgets, jnp.int32)))
        step = gen.jitted_step(engine, layout)
        draft_params = None if draft is None else draft.params
        base = [len(r.tokens) for r in rows]
        calls = [(r.calls[0], r.calls[1], r.hist.copy()) for r in rows]
        host = _host(layout, state)
        while bool(gen.unfinished(host)):
            state = step(state, b.target.params, draft_params)
            host = _host(layout, state)
            new = gen.generated_tokens(host, b.eos_id)
            c = jax.tree.map(np.asarray, host.counters)
            stopped = False
            for i, (r, toks, n0) in enumerate(zip(rows, new, base, strict=True)):
                r.tokens[n0:] = toks
                r.set_counts(calls[i], c.target_calls[i], c.draft_calls[i], c.accepted_hist[i])
                if req.stop and r.finish is None and r.hits_stop(self.g.tokenizer, req.stop):
                    r.finish = "stop"
                    stopped = True
            if stopped:  # rows stopped by a stop string run no further round
                done = jnp.asarray(np.asarray(host.done) | [r.finish == "stop" for r in rows])
                state = _placed(layout, state._replace(done=done))
                host = host._replace(done=done)
            yield
        gen.check_finished(host)
        for r in rows:
            if r.finish is None:
                if r.tokens and r.tokens[-1] == b.eos_id:
                    r.finish = "eos"
                elif len(r.tokens) >= r.budget:
                    r.finish = "length"


def _host(layout, state):
    """The state's read-back fields, whole on this process (replicated over a mesh)."""
    if layout is None:
        return state
    fields = ("tokens", "prompt_len", "max_new", "counters", "done", "round")
    return state._replace(**layout.replicated({k: getattr(state, k) for k in fields}))


def _placed(layout, state):
    return state if layout is None else layout.place(state)


class _Row:
    """One prompt's generation in progress."""

    def __init__(self, prompt: list[int], budget: int):
        self.prompt, self.budget = prompt, budget
        self.tokens: list[int] = []
        self.finish: str | None = None
        self.calls = [0, 0]
        self.hist = np.zeros(1, np.int64)

    def copy(self) -> _Row:
        """A row decoded alongside, never read (batch padding on a mesh)."""
        twin = _Row(list(self.prompt), self.budget)
        twin.tokens = list(self.tokens)
        return twin

    def set_counts(self, before, target_calls: int, draft_calls: int, hist) -> None:
        """Counters = ``before`` (earlier phases) + this phase's so far."""
        calls0, calls1, hist0 = before
        hist = np.asarray(hist, np.int64)
        width = max(len(hist), len(hist0))
        self.hist = np.pad(hist0, (0, width - len(hist0))) + np.pad(hist, (0, width - len(hist)))
        self.calls = [calls0 + int(target_calls), calls1 + int(draft_calls)]

    def hits_stop(self, tokenizer, stop) -> bool:
        text = tokenizer.decode(self.tokens, skip_special=True)
        return any(s in text for s in stop)

    def completion(self, tokenizer, stop, seconds: float) -> Completion:
        text = tokenizer.decode(self.tokens, skip_special=True)
        if self.finish == "stop":
            text = cut_at_stop(text, stop)
        stats = Stats(len(self.tokens), seconds, self.calls[0], self.calls[1],
                      tuple(int(x) for x in self.hist))  # fmt: skip
        finish = self.finish or "length"
        return Completion(text, tuple(self.tokens), finish, len(self.prompt), stats)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` before the first occurrence of any stop string."""
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of ``text`` to hold back while streaming: an unfinished
    multi-byte character (decoded as U+FFFD) or the start of a possible stop string."""
    hold = 0
    while hold < len(text) and text[len(text) - 1 - hold] == "\ufffd":
        hold += 1
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


class Stream:
    """Iterating yields text pieces as rounds are accepted; together they are the
    completion's text. After the end, :attr:`completion` holds the :class:`Completion`.

    The generation runs while the caller iterates; leaving the loop early (``break``, or a
    KeyboardInterrupt in a terminal) stops it, and :attr:`completion` then holds what was
    generated so far (``finish_reason='length'``).
    """

    def __init__(self, generator: TextGenerator, ids: list[int], req: Request):
        self._run = Decoding(generator, [ids], req)
        self._tok, self._stop = generator.tokenizer, req.stop
        self._completion: Completion | None = None

    @property
    def completion(self) -> Completion:
        return self._completion or self._run.completions()[0]

    def __iter__(self) -> Iterator[str]:
        shown = 0
        row = self._run.rows[0]
        for _ in self._run.rounds():
            text = self._tok.decode(row.tokens, skip_special=True)
            cut = cut_at_stop(text, self._stop)
            ready = cut if len(cut) < len(text) else text[: len(text) - held_back(text, self._stop)]
            if len(ready) > shown:
                yield ready[shown:]
                shown = len(ready)
        self._completion = self._run.completions()[0]
        if len(self._completion.text) > shown:
            yield self._completion.text[shown:]
