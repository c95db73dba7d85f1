"""Prompt files: JSONL in, JSONL out in input order, resumable, batched by length bucket.

Each input line is a JSON object with ``"prompt"`` (text) or ``"messages"`` (chat turns,
rendered with the model's template), and optionally its own ``"temperature"``,
``"top_p"``, ``"top_k"``, ``"max_new_tokens"``, ``"seed"``, ``"stop"`` and an ``"id"``
copied to the output. Every line is checked before anything is generated; a bad one ends
the run in one line naming its number (:class:`BatchError`).

Output: ``OUT`` gets one object per input line, in input order, written at the end
(atomically). While the run goes, finished lines are appended (and fsynced) to
``OUT.partial``, whose first line records the settings; rerunning the same command resumes
from it, and a run with other settings (or another input) is refused rather than mixed.
An existing ``OUT`` is never overwritten. Over several processes (a mesh spanning hosts)
every process generates every batch, and process 0 alone reads and writes the files.

Lines that share their sampling and stop strings are generated together, grouped by
prompt length (one compiled step per length bucket and batch size); a line's random
numbers come from its own key, ``fold_in(PRNGKey(seed), line number)``, so its output does
not depend on its batch, nor on an interruption.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from experiments.common import distributed, strict_json
from experiments.common.progress import progress_bar
from experiments.text.decoding import BUCKET
from experiments.text.generator import GenerationError, TextGenerator
from experiments.text.results import Completion, Request, Stats

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_new_tokens", "seed", "stop")
KEYS = {"prompt", "messages", "id", *SAMPLING_KEYS}
PARTIAL = ".partial"


class BatchError(ValueError):
    """A bad prompt file or output path (the message is one line, naming the line)."""


@dataclasses.dataclass(frozen=True)
class Line:
    """One checked input line: its number (1-based), prompt ids and request."""

    number: int
    prompt_ids: tuple[int, ...]
    request: Request
    id: object = None


def read_lines(path: str | os.PathLike, tg: TextGenerator, defaults: dict) -> list[Line]:
    """Parses and checks every line of a JSONL prompt file (blank lines are skipped).

    Args:
      path: the file.
      tg: the generator (its tokenizer and context check the prompts).
      defaults: ``method`` and the sampling keys of lines that do not set them.

    Raises:
      BatchError: the first bad line, by number, in one line.
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BatchError(f"cannot read {path}: {e}") from None
    out = []
    for number, text in enumerate(raw.splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path} line {number}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise BatchError(f"{where}: not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise BatchError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - KEYS)
        if unknown:
            raise BatchError(f"{where}: unknown keys {unknown}; known: {sorted(KEYS)}")
        if ("prompt" in obj) == ("messages" in obj):
            raise BatchError(f"{where}: give exactly one of 'prompt' and 'messages'")
        settings = {
            k: obj.get(k, defaults.get(k)) for k in SAMPLING_KEYS if k in obj or k in defaults
        }
        try:
            req = tg.request(defaults["method"], **settings)
            ids = tg.encode(obj.get("prompt", obj.get("messages")))
        except (GenerationError, TypeError) as e:
            raise BatchError(f"{where}: {e}") from None
        out.append(Line(number, tuple(ids), req, obj.get("id")))
    if not out:
        raise BatchError(f"{path} holds no prompt")
    return out


def fingerprint(lines: Sequence[Line], setup: dict) -> str:
    """sha256 of the settings and every line's prompt ids and request: what a resumed run
    must share with the run it continues."""
    h = hashlib.sha256(json.dumps(setup, sort_keys=True).encode())
    for line in lines:
        r = line.request
        h.update(repr((line.number, line.prompt_ids, r.method.describe(), r.sampling,
                       r.max_new_tokens, r.stop, r.seed)).encode())  # fmt: skip
    return h.hexdigest()


def record(line: Line, done: Completion) -> dict:
    """The output object of a line."""
    s = done.stats
    out = {"line": line.number} | ({"id": line.id} if line.id is not None else {})
    return out | {
        "text": done.text,
        "finish_reason": done.finish_reason,
        "prompt_tokens": done.prompt_tokens,
        "new_tokens": s.new_tokens,
        "target_calls": s.target_calls,
        "tokens_per_call": s.tokens_per_call,
        "acceptance_by_depth": s.acceptance_by_depth,
        "tokens": list(done.tokens),
    }


def _load_partial(path: Path, print_: str) -> dict[int, dict]:
    """Records of a partial output written under the fingerprint ``print_``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    head = json.loads(lines[0]) if lines else {}
    if head.get("fingerprint") != print_:
        raise BatchError(
            f"{path} holds a run with other settings or another input; remove it to start "
            "over, or rerun with the settings it was made with"
        )
    done = {}
    for text in lines[1:]:
        try:
            rec = json.loads(text)
        except json.JSONDecodeError:
            break  # a line cut by a kill: redone
        done[rec["line"]] = rec
    return done


def run(
    tg: TextGenerator, lines: Sequence[Line], output: str | os.PathLike, setup: dict, *,
    batch_size: int = 8, progress: bool = True, compare: Callable | None = None,
    log: Callable[[str], None] = print,
) -> dict:  # fmt: skip
    """Generates every line (resuming from ``OUT.partial``) and writes ``output``.

    Args:
      tg: the generator.
      lines: from :func:`read_lines`.
      output: the JSONL to write; must not exist.
      setup: the models and defaults, recorded (a resumed run must match).
      batch_size: lines per batch.
      progress: a progress bar.
      compare: optional ``(ids, request, keys, warm_up=False) -> list[Completion]`` run on
        each batch right after it (e.g. AR, timed alongside); with ``warm_up`` it only
        compiles.
      log: where messages go.

    Returns:
      A summary: lines, tokens, seconds of this invocation, tokens per second and per
      target call; with ``compare`` the same for it, and among the greedy (T=0) lines how
      many texts agree.
    """
    output = Path(output)
    main = distributed.is_main()  # process 0 reads and writes the files, for every process
    partial = output.with_name(output.name + PARTIAL)
    print_ = fingerprint(lines, setup)
    state, done = {}, {}
    if main:
        try:
            if output.exists():
                raise BatchError(f"{output} exists; choose another --output or remove it")
            done = _load_partial(partial, print_) if partial.exists() else {}
            state = {"done": sorted(done)}
        except BatchError as e:
            state = {"error": str(e)}
    state = distributed.broadcast_json(state)
    if "error" in state:
        raise BatchError(state["error"])
    finished = set(state["done"])
    if finished:
        log(f"resuming: {len(finished)} of {len(lines)} lines already in {partial}")
    elif main:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(strict_json.dumps({"fingerprint": print_, "setup": setup}) + "\n")
    todo = [line for line in lines if line.number not in finished]
    bar = progress_bar(len(todo), progress and main, "line", "generating")
    ours, theirs, same, greedy = [], [], 0, 0
    compiled = set()
    try:
        for batch in batches(todo, batch_size):
            req = batch[0].request
            ids = [list(line.prompt_ids) for line in batch]
            shape = (_group(batch[0]), len(batch), min(len(i) for i in ids) == 1)
            if shape not in compiled:  # compile untimed: the rates compare decoding
                bar.set_description("compiling")
                tg.warm_up(ids, req)
                if compare is not None:
                    compare(ids, req, None, warm_up=True)
                compiled.add(shape)
                bar.set_description("generating")
            keys = [jax.random.fold_in(jax.random.PRNGKey(req.seed), line.number) for line in batch]
            start = time.perf_counter()
            results = tg.decode_ids(ids, req, keys=jax.numpy.stack(keys))
            ours.append(Stats.total([r.stats for r in results], time.perf_counter() - start))
            if compare is not None:
                start = time.perf_counter()
                other = compare(ids, req, jax.numpy.stack(keys))
                theirs.append(Stats.total([r.stats for r in other], time.perf_counter() - start))
                if req.sampling.temperature == 0:
                    greedy += len(batch)
                    same += sum(a.text == b.text for a, b in zip(results, other, strict=True))
            if main:
                with open(partial, "a", encoding="utf-8") as f:
                    for line, r in zip(batch, results, strict=True):
                        rec = record(line, r)
                        done[line.number] = rec
                        f.write(strict_json.dumps(rec) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            bar.update(len(batch))
    finally:
        bar.close()
    if not main:
        return {}
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(strict_json.dumps(done[line.number]) + "\n")
    tmp.replace(output)
    partial.unlink()
    summary = {"lines": len(lines), "generated_now": len(todo)}
    if ours:
        total = Stats.total(ours, sum(s.seconds for s in ours))
        summary |= _rates("", total)
    if theirs:
        other = Stats.total(theirs, sum(s.seconds for s in theirs))
        summary |= _rates("compare_", other)
        summary["ratio_vs_compare"] = (
            summary["tokens_per_second"] / summary["compare_tokens_per_second"]
        )
        summary["greedy_lines"], summary["identical_greedy_texts"] = greedy, same
    return summary


def _rates(prefix: str, s: Stats) -> dict:
    return {
        f"{prefix}tokens": s.new_tokens,
        f"{prefix}seconds": s.seconds,
        f"{prefix}tokens_per_second": s.tokens_per_second,
        f"{prefix}tokens_per_call": s.tokens_per_call,
    }


def batches(lines: Sequence[Line], size: int) -> list[list[Line]]:
    """Lines grouped by request (sampling, budget, stop) and prompt-length bucket, longest
    first, in batches of at most ``size``."""
    groups: dict[tuple, list[Line]] = {}
    for line in lines:
        groups.setdefault(_group(line), []).append(line)
    out = []
    for key in sorted(groups, key=lambda k: -k[-1]):
        group = groups[key]
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


def _group(line: Line) -> tuple:
    """What lines batched together share: the request and the prompt-length bucket."""
    r = line.request
    bucket = -(-len(line.prompt_ids) // BUCKET)
    return (r.method.describe(), r.sampling, r.max_new_tokens, r.stop, r.seed, bucket)
