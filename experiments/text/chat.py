"""A chat in the terminal: the history is kept over turns and rendered with the model's chat
template each turn; replies stream as rounds are accepted.

Ctrl-C during a reply ends that reply (what was generated stays in the history); Ctrl-C or
Ctrl-D at the prompt, or ``/exit``, ends the session; ``/reset`` clears the history. When
the history no longer fits the model's context with the reply's budget, its oldest turns
are dropped (and the session says so).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from experiments.text.generator import GenerationError, TextGenerator
from experiments.text.results import Stats

USER, ASSISTANT = "you> ", "assistant> "


def fit(tg: TextGenerator, history: list[dict], max_new_tokens: int) -> tuple[list[dict], int]:
    """The latest turns of ``history`` whose rendering leaves ``max_new_tokens`` of the
    model's context (the last user turn is kept in any case); and how many were dropped."""
    limit = tg.context
    dropped = 0
    while True:
        messages = history[dropped:]
        ids = tg.tokenizer.encode_chat(messages)
        if not limit or len(ids) + max_new_tokens <= limit or len(messages) <= 1:
            return messages, dropped
        dropped += 2 if len(messages) > 2 else 1  # a user turn and its reply


def stats_line(method: str, s: Stats) -> str:
    """``12.3 tok/s, 2.41 tokens per target call, acceptance by depth 0.91 0.80 ...``."""
    acc = " ".join("-" if a is None else f"{a:.2f}" for a in s.acceptance_by_depth)
    line = f"[{method}: {s.new_tokens} tokens, {s.tokens_per_second:.1f} tok/s"
    if s.target_calls:
        line += f", {s.tokens_per_call:.2f} tokens per target call"
    return line + (f", acceptance by depth {acc}]" if acc else "]")


def session(
    tg: TextGenerator, method: str, settings: dict, *,
    read: Callable[[str], str] = input, write: Callable[[str], object] = sys.stdout.write,
    flush: Callable[[], object] = sys.stdout.flush, note: Callable[[str], object] = print,
) -> list[dict]:  # fmt: skip
    """Runs the chat until the user ends it; returns the history.

    Args:
      tg: the generator.
      method: the method text of every reply.
      settings: ``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``, ``seed``, ``stop``.
      read, write, flush, note: the terminal (``input``, stdout, and a line for notes).
    """
    history: list[dict] = []
    note("chat: Ctrl-C stops a reply; /reset clears the history; Ctrl-D or /exit ends")
    turn = 0
    while True:
        try:
            line = read(USER)
        except (EOFError, KeyboardInterrupt):
            write("\n")
            break
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history.clear()
            note("(history cleared)")
            continue
        if not command:
            continue
        history.append({"role": "user", "content": line})
        messages, dropped = fit(tg, history, settings.get("max_new_tokens", 64))
        if dropped:
            del history[:dropped]
            note(f"(dropped the {dropped} oldest turns to fit the model's context)")
        seed = settings.get("seed", 0) + turn  # a new draw each turn, reproducible
        try:
            stream = tg.chat(messages, method, stream=True, **(settings | {"seed": seed}))
        except GenerationError as e:
            history.pop()
            note(f"error: {e}")
            continue
        write(ASSISTANT)
        flush()
        stopped = False
        try:
            for piece in stream:
                write(piece)
                flush()
        except KeyboardInterrupt:
            stopped = True
        reply = stream.completion
        write(" [stopped]\n" if stopped else "\n")
        history.append({"role": "assistant", "content": reply.text})
        note(stats_line(method, reply.stats))
        turn += 1
    return history
