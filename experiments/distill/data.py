"""Distillation data: token sequences from registry text and the target's laws on them.

Text (`documents`): later ShareGPT turns (`experiments.data.datasets.vocabulary_corpus`),
which no evaluated prompt or reference uses (those come from first turns, HumanEval and
Shakespeare); or, with ``corpus=mix``, later conversations in the target's chat template
alternating with Python standard-library source. Every 20th document goes to the held-out
split, the rest to training, so the two never share a document. Each split is one token
stream (documents joined by EOS) cut into sequences of ``seq_len`` tokens; asking for more
sequences only appends to the list.

Teacher laws: for every position of every sequence, the target's top-``k`` ids and their
log-probabilities (temperature 1, no truncation); the mass outside them is implied. They
are computed once, in chunks written atomically to a cache directory keyed by everything
that determines them (`teacher_dir`), so an interrupted run resumes at the first missing
chunk and another workdir reuses them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.data import datasets
from experiments.distill.settings import CORPORA
from rsd_jax import kv_cache

HELDOUT_EVERY = 20  # turn i is held out when i % HELDOUT_EVERY == 0
FORMAT = "distill-teacher-v1"


class Split(NamedTuple):
    """Token sequences of one split: ``ids`` ``[N, L]`` int32."""

    ids: np.ndarray


ROLES = {"human": "user", "gpt": "assistant"}


def sharegpt_later_conversations(records: Iterable[dict], max_chars: int) -> list[list[dict]]:
    """The turns after the first exchange of each conversation as chat messages
    (``human`` -> user, ``gpt`` -> assistant; other speakers dropped), in file order,
    until ``max_chars`` characters: the same text as :func:`sharegpt_later_turns`, kept
    together per conversation so that a chat template can wrap it."""
    out, total = [], 0
    for rec in records:
        messages = []
        for turn in (rec.get("conversations") or [])[2:]:
            text = (turn.get("value") or "").strip()
            role = ROLES.get(turn.get("from"))
            if text and role:
                messages.append({"role": role, "content": text})
                total += len(text)
        if messages:
            out.append(messages)
        if total >= max_chars:
            break
    return out


def python_sources(max_chars: int) -> list[str]:
    """Source files of the running Python's standard library (PSF licence; test suites
    left out), in sorted path order, until ``max_chars`` characters: code text that ships
    with every Python and that no evaluated prompt (HumanEval) comes from."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    out, total = [], 0
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts)
        if parts & {"test", "tests", "site-packages", "idle_test", "lib2to3"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            out.append(text)
            total += len(text)
        if total >= max_chars:
            break
    return out


def documents(tokenizer, corpus: str, max_chars: int) -> list[str]:
    """The training text as documents, at most about ``max_chars`` characters.

    ``sharegpt``: later ShareGPT turns, each a document. ``mix``: text like the evaluated
    prompts, alternating two kinds: later ShareGPT conversations rendered with the
    target's chat template (as the chat tasks' prompts are), and Python source files of
    the standard library (code, as HumanEval's are), half the characters each.
    """
    if corpus == "sharegpt":
        return datasets.vocabulary_corpus(max_chars=max_chars)
    if corpus != "mix":
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {CORPORA}")
    text = datasets.locate("sharegpt").read_text(encoding="utf-8", errors="replace")
    chats = sharegpt_later_conversations(datasets.iter_json_array(text), max_chars // 2)
    chat = [tokenizer.apply_chat_template(m, add_generation_prompt=False) for m in chats]
    code = python_sources(max_chars // 2)
    out = []
    for i in range(max(len(chat), len(code))):
        out += [kind[i] for kind in (chat, code) if i < len(kind)]
    return out


def _streams(
    tokenizer, need: dict[str, int], corpus: str = "sharegpt", chars_per_token: float = 3.0
) -> dict:
    """Token streams of the train/held-out documents, at least ``need[split]`` tokens each."""
    eos = tokenizer.eos_id if tokenizer.eos_id >= 0 else 0
    budget = int(chars_per_token * (need["train"] + need["heldout"] * HELDOUT_EVERY)) + 200_000
    while True:
        turns = documents(tokenizer, corpus, budget)
        out = {"train": [], "heldout": []}
        for i, text in enumerate(turns):
            split = "heldout" if i % HELDOUT_EVERY == 0 else "train"
            if sum(map(len, out[split])) < need[split]:
                out[split].append(tokenizer.encode(text, add_bos=False) + [eos])
            if all(sum(map(len, out[s])) >= need[s] for s in out):
                return {s: np.concatenate(v).astype(np.int32) for s, v in out.items()}
        if len(turns) < 10 or budget > 64_000_000:
            got = {s: sum(map(len, v)) for s, v in out.items()}
            raise ValueError(f"the corpus holds too little text: need {need}, got {got}")
        budget *= 2


def sequences(
    tokenizer, seq_len: int, train: int, heldout: int, corpus: str = "sharegpt"
) -> tuple[Split, Split]:
    """``train`` and ``heldout`` sequences of ``seq_len`` tokens of ``corpus``
    (:func:`documents`; deterministic)."""
    if min(seq_len, train, heldout) < 1:
        raise ValueError("seq_len, train and heldout sequences must be >= 1")
    need = {"train": train * seq_len, "heldout": heldout * seq_len}
    streams = _streams(tokenizer, need, corpus)
    cut = {"train": train, "heldout": heldout}
    out = {s: Split(streams[s][: n * seq_len].reshape(n, seq_len)) for s, n in cut.items()}
    return out["train"], out["heldout"]


def teacher_dir(root: Path, identity: dict) -> Path:
    """``root/<sha of identity>``: one cache per (target, tokenizer, seq_len, k, format)."""
    text = json.dumps(identity | {"format": FORMAT}, sort_keys=True)
    return Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]


def make_teacher_fn(apply: Callable, top_k: int):
    """Jitted ``(params, ids [b, L]) -> (top_logp [b, L, k] f32, top_ids [b, L, k] i32)``.

    ``apply`` is the model's pure forward ``(params, tokens, positions, mask, cache)`` with
    a fresh cache built by ``init_cache(b, L)``; see `teacher_laws`.
    """

    def fn(params, ids, cache):
        logits, _ = kv_cache.prefill(apply, params, ids, cache)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        top_logp, top_ids = jax.lax.top_k(logp, top_k)
        return top_logp, top_ids.astype(jnp.int32)

    return jax.jit(fn)


def _save_atomic(path: Path, **arrays) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def teacher_laws(
    directory: Path,
    split: str,
    data: Split,
    compute: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    chunk: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """The teacher's top-k laws for every sequence of ``data``, computing missing chunks.

    Args:
      directory: the cache (`teacher_dir`); chunk ``i`` of a split covers sequences
        ``[i*chunk, (i+1)*chunk)`` and is ``<split>_<i>.npz``.
      split: 'train' or 'heldout'.
      data: the split's sequences.
      compute: ``ids [b, L] -> (top_logp, top_ids)`` numpy arrays.
      chunk: sequences per chunk (a chunk is written whole or not at all).
      progress: called with the number of sequences done by each computed chunk.

    Returns:
      ``{"ids": [N, L], "top_logp": [N, L, k], "top_ids": [N, L, k]}``.

    Raises:
      ValueError: a stored chunk holds other token ids than ``data`` (a damaged cache).
    """
    directory.mkdir(parents=True, exist_ok=True)
    parts = {"top_logp": [], "top_ids": []}
    for i, start in enumerate(range(0, len(data.ids), chunk)):
        ids = data.ids[start : start + chunk]
        path = directory / f"{split}_{i:05d}.npz"
        stored = None
        if path.is_file():
            try:
                with np.load(path) as f:
                    stored = {k: f[k] for k in ("ids", "top_logp", "top_ids")}
            except (OSError, ValueError, KeyError):
                stored = None  # unreadable (e.g. a torn write of an older version): redo
        if stored is not None and stored["ids"].shape == ids.shape:
            if not np.array_equal(stored["ids"], ids):
                raise ValueError(f"{path} holds other tokens than its sequences; delete it")
        else:
            top_logp, top_ids = compute(ids)
            stored = {"ids": ids, "top_logp": top_logp, "top_ids": top_ids}
            _save_atomic(path, **stored)
            if progress is not None:
                progress(len(ids))
        parts["top_logp"].append(stored["top_logp"])
        parts["top_ids"].append(stored["top_ids"])
    return {"ids": data.ids} | {k: np.concatenate(v) for k, v in parts.items()}


def batches(num: int, batch: int, seed: int, start_step: int) -> Iterator[np.ndarray]:
    """Sequence indices of training steps ``start_step, start_step + 1, ...``.

    Epoch ``e`` is a permutation drawn from ``(seed, e)``; step ``s`` takes the ``s``-th
    slice of ``batch`` indices of the concatenated epochs, so the data position of a
    resumed run is a function of its step alone.
    """
    if batch > num:
        raise ValueError(f"batch {batch} exceeds the {num} training sequences")
    per_epoch = num // batch
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(num)
        yield order[k * batch : (k + 1) * batch]
        step += 1
