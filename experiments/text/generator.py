"""Text in, text out with any lossless method: prompts, chat messages, streaming, stop strings.

    from experiments.text import TextGenerator

    tg = TextGenerator.load("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
    done = tg.generate("def fib(n):", method="rsd_s:2x4", temperature=0, max_new_tokens=64)
    print(done.text, done.stats.tokens_per_call, done.stats.acceptance_by_depth)
    for piece in tg.stream("Write a haiku about JAX.", method="sd:5"):
        print(piece, end="", flush=True)
    reply = tg.chat([{"role": "user", "content": "Hi!"}], method="sd:5")

Every method runs the same engine as the jobs (:class:`rsd_jax.decode.Engine`), one compiled
step per (method, prompt bucket, batch size, token budget), driven round by round from
Python (:func:`rsd_jax.generation.iterate`): after each round the accepted tokens are
decoded, streamed, and checked against the stop strings. ``generate`` and ``stream`` use
that same driver, so for the same seed they give the same text. Row ``i`` of a call draws
with ``fold_in(PRNGKey(seed), i)`` (or its own key), so a prompt's output does not depend
on the rest of its batch.

Bad input ends in :class:`GenerationError`, one line: an empty prompt, a prompt longer than
the model's context, an unknown method, a drafting method without a draft, bad sampling
values. Valid input is not refused: a one-token prompt (the engine's drafts need two) gets
its first token from the target alone, then the method continues; a prompt plus
``max_new_tokens`` past the context generates up to the context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax

from experiments.common import policy
from experiments.speculative import sources
from experiments.speculative.settings import Models
from experiments.text.decoding import Decoding, Stream
from experiments.text.results import Completion, Request
from rsd_jax import decode, methods, transforms

BUCKET = 32  # prompts are padded to a multiple of this: one compiled step per bucket
FINISH_REASONS = ("eos", "length", "stop")
_AR = methods.parse("ar")


class GenerationError(ValueError):
    """Input the generator cannot take (the message is one line saying what and why)."""


Prompt = str | Sequence[Mapping[str, str]]


class TextGenerator:
    """Generates text from a loaded draft/target pair (see the module docstring).

    Args:
      bundle: the models as :func:`experiments.speculative.sources.real_models` returns
        them (``draft`` may be None: AR only); needs a tokenizer.
      nucleus: the top-p threshold the engine uses (None: XLA's bisection; the CPU
        kernel :func:`models.kernels.nucleus.threshold` by default on one CPU device).
      mesh: run SPMD on a ``("data", "model")`` mesh (:func:`rsd_jax.sharding.make_mesh`),
        possibly spanning several processes; batches are padded to the data axis.
    """

    def __init__(self, bundle: sources.Bundle, nucleus: Callable | None | str = "auto", mesh=None):
        if bundle.tokenizer is None:
            raise GenerationError("the target has no tokenizer: text needs one")
        if nucleus == "auto":
            from models.kernels import nucleus as nucleus_lib

            on_cpu = jax.default_backend() == "cpu" and mesh is None
            nucleus = nucleus_lib.threshold if on_cpu else None
        self.layout = None
        if mesh is not None:
            from rsd_jax import sharding

            bundle = bundle._replace(
                target=sharding.place_model(bundle.target, mesh),
                draft=sharding.place_model(bundle.draft, mesh),
            )
            self.layout = sharding.Layout.for_models(mesh, bundle.target, bundle.draft)
        self.bundle = bundle
        self.tokenizer = bundle.tokenizer
        self.nucleus = nucleus
        self._engines: dict[str, decode.Engine] = {}

    @classmethod
    def load(
        cls, target: str, draft: str | None = None, *, dtype: str = "auto",
        target_weights: str = "auto", draft_weights: str = "auto", draft_vocab: int = 0,
        mesh=None,
    ) -> TextGenerator:  # fmt: skip
        """Loads a pair: presets, GGUF files, HF directories or an exported draft; ``draft``
        None for AR only. The tokenizers must agree (else the first difference is named).
        ``auto`` dtype and weights are decided for this machine
        (:func:`experiments.speculative.sources.resolve`; ``bundle.info['layout']``).
        """
        mesh_sizes = None if mesh is None else tuple(mesh.devices.shape)
        setup = Models(
            target, draft or "", draft_vocab, target_weights, draft_weights, dtype, False,
            mesh_sizes,
        )  # fmt: skip
        return cls(sources.real_models(setup), mesh=mesh)

    # ------------------------------------------------------------------ checks

    def method_text(self, method: str | methods.Method, batch: int = 1) -> str | methods.Method:
        """``method``, with ``'auto'`` replaced by the policy's method for ``batch`` rows on
        this backend (:func:`experiments.common.policy.choose`; AR without a draft)."""
        if method == policy.AUTO:
            return policy.choose(batch, jax.default_backend(), self.bundle.draft is not None)
        return method

    def request(
        self, method: str | methods.Method, temperature: float = 1.0, top_p: float = 1.0,
        top_k: int = 0, max_new_tokens: int = 64, stop: Sequence[str] | str = (), seed: int = 0,
        batch: int = 1,
    ) -> Request:  # fmt: skip
        """The checked settings of a call (raises :class:`GenerationError`, one line).

        ``method='auto'`` takes the method :func:`experiments.common.policy.choose` gives
        for ``batch`` rows on this backend (AR without a draft).
        """
        method = self.method_text(method, batch)
        try:
            m = method if isinstance(method, methods.Method) else methods.parse(method)
        except ValueError as e:
            raise GenerationError(str(e)) from None
        if m.spec.depth > 0 and self.bundle.draft is None:
            raise GenerationError(f"method {m.describe()} drafts, but no draft model is loaded")
        try:
            sampling = transforms.SamplingParams(float(temperature), int(top_k), float(top_p))
        except (TypeError, ValueError) as e:
            raise GenerationError(str(e)) from None
        if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens:
            raise GenerationError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise GenerationError(f"stop strings must be non-empty strings, got {list(stop)!r}")
        if not (isinstance(seed, int) and 0 <= seed < 2**32):
            raise GenerationError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        return Request(m, sampling, int(max_new_tokens), stop, seed)

    def encode(self, prompt: Prompt, index: int | None = None) -> list[int]:
        """Ids of a text prompt, or of chat messages rendered with the model's template
        (``index``: the prompt's number in a list, for the error message)."""
        name = "the prompt" if index is None else f"prompt {index}"
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, Sequence) and prompt and all(_is_message(m) for m in prompt):
            ids = self.tokenizer.encode_chat(list(prompt))
        else:
            raise GenerationError(
                f"{name} is neither text nor a non-empty list of messages "
                "({'role': ..., 'content': ...})"
            )
        if not ids:
            raise GenerationError(f"{name} is empty")
        limit = self.context
        if limit and len(ids) >= limit:
            raise GenerationError(
                f"{name} has {len(ids)} tokens; the model's context is {limit} tokens"
            )
        return ids

    @property
    def context(self) -> int:
        """Positions the target was trained for (0: unknown)."""
        return int(self.bundle.target.max_positions or 0)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: Prompt | Sequence[Prompt], method="auto", *, keys=None, **kw):
        """Completions of one prompt (a :class:`Completion`) or of a list of prompts (a
        list, in order, generated as one batch).

        Args:
          prompts: text, chat messages (``[{'role': 'user', 'content': ...}]``), or a list
            of either.
          method: ``'auto'`` (by batch size, :mod:`experiments.common.policy`), ``'ar'``,
            ``'sd:5'``, ``'rsd_s:2x4'``, ... (:func:`rsd_jax.methods.parse`).
          keys: optional ``[B, 2]`` per-prompt PRNG keys (default: from ``seed``).
          **kw: ``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``, ``stop``, ``seed``.
        """
        single = isinstance(prompts, str) or (prompts and _is_message(prompts[0]))
        batch = [prompts] if single else list(prompts)
        if not batch:
            raise GenerationError("no prompts given")
        req = self.request(method, batch=len(batch), **kw)
        ids = [self.encode(p, None if single else i) for i, p in enumerate(batch)]
        out = self.decode_ids(ids, req, keys=keys)
        return out[0] if single else out

    def stream(self, prompt: Prompt, method="auto", **kw) -> Stream:
        """Text pieces of one prompt's generation as rounds are accepted (see :class:`Stream`)."""
        req = self.request(method, **kw)
        return Stream(self, self.encode(prompt), req)

    def chat(self, messages: Sequence[Mapping[str, str]], method="auto", stream=False, **kw):
        """The assistant's reply to ``messages`` (the model's chat template); a
        :class:`Stream` with ``stream=True``."""
        if not (isinstance(messages, Sequence) and messages and all(map(_is_message, messages))):
            raise GenerationError("chat needs a non-empty list of {'role', 'content'} messages")
        return (
            self.stream(messages, method, **kw)
            if stream
            else self.generate(list(messages), method, **kw)
        )

    def warm_up(self, ids: Sequence[Sequence[int]], req: Request) -> None:
        """Compiles what :meth:`decode_ids` of these shapes runs (prefill and step), by
        decoding one round of the method; nothing is kept."""
        run = Decoding(self, ids, req)
        for _ in run.rounds():
            if run.method == req.method:
                break

    def decode_ids(self, ids: Sequence[Sequence[int]], req: Request, keys=None) -> list[Completion]:
        """Generates from token ids (checked by :meth:`encode`) as one batch."""
        run = Decoding(self, ids, req, keys)
        for _ in run.rounds():
            pass
        return run.completions()

    def budget(self, prompt_len: int, max_new: int) -> int:
        """The token budget of a prompt: ``max_new``, capped by the context."""
        limit = self.context
        return max_new if not limit else max(1, min(max_new, limit - prompt_len))

    def engine(self, method: methods.Method) -> decode.Engine:
        """The engine of ``method`` on this pair (one per method: compiled steps are cached
        per engine)."""
        text = method.describe()
        if text not in self._engines:
            b = self.bundle
            self._engines[text] = decode.Engine(
                method=method,
                target_apply=b.target.apply,
                draft_apply=None if b.draft is None else b.draft.apply,
                vocab_size=b.target.vocab_size,
                valid_vocab_size=b.valid_vocab_size,
                eos_id=b.eos_id,
                nucleus=self.nucleus,
            )
        return self._engines[text]


def _is_message(m) -> bool:
    return (
        isinstance(m, Mapping)
        and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str)
    )
