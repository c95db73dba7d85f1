"""Text in, text out from the command line: one prompt, a chat, or a JSONL prompt file.

    python -m experiments.generate --prompt="def quicksort(xs):" --method=sd:5 --temperature=0
    python -m experiments.generate --prompt="Explain KV caches." --chat_template --compare_ar
    python -m experiments.generate --chat --method=rsd_s:2x4
    python -m experiments.generate --prompts_file=in.jsonl --output=out.jsonl --method=sd:5

Models: ``--target`` / ``--draft`` take preset names, .gguf files or HF directories
(an exported distilled draft included); ``--draft=`` (empty) runs AR only. With one prompt
the text streams as rounds are accepted, then a line gives tok/s, tokens per target call
and the acceptance at each depth; ``--compare_ar`` also decodes the prompt with AR (both
compiled first, untimed) and prints the speed ratio, and at T=0 whether the texts are equal.
A prompt file (see :mod:`experiments.text.batch`) is written in input order and resumes
after an interruption. Bad input ends in one line (``error: ...``), never a traceback.

``--mesh=DxM`` runs on a device mesh; with ``--coordinator_address``, ``--num_processes``
and ``--process_id`` (or a cluster JAX finds itself) it spans several processes, each
running this same command; process 0 prints and writes (``--prompt`` and
``--prompts_file``; a chat reads one terminal, so it runs as one process).
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from experiments.common import distributed, runtime
from experiments.text.chat import session, stats_line
from rsd_jax import methods

_TARGET = flags.DEFINE_string("target", "qwen2.5-coder-1.5b", "Target: preset, .gguf or HF dir.")
_DRAFT = flags.DEFINE_string("draft", "qwen2.5-coder-0.5b", "Draft (same tokenizer); '' = none.")
_METHOD = flags.DEFINE_string(
    "method", "auto", "auto (by batch size and backend), ar, sd:L, rsd_c:b1-b2.., rsd_s:WxL, ..."
)
_PROMPT = flags.DEFINE_string("prompt", None, "One prompt (text).")
_CHAT_TEMPLATE = flags.DEFINE_bool(
    "chat_template", False, "Render --prompt as a user turn with the model's chat template."
)
_FILE = flags.DEFINE_string("prompts_file", None, "JSONL prompts ({'prompt': ...} or messages).")
_OUTPUT = flags.DEFINE_string("output", None, "JSONL output of --prompts_file (must not exist).")
_CHAT = flags.DEFINE_bool("chat", False, "Chat in the terminal, keeping the history.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 = greedy.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1]; 1 = off.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely ids; 0 = off.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (a prompt file's line n uses fold_in(n)).")
_STOP = flags.DEFINE_multi_string("stop", [], "Stop string (repeat the flag for several).")
_COMPARE = flags.DEFINE_bool("compare_ar", False, "Also decode with AR and print the ratio.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompt file: lines generated together.")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"], "Model dtype.")
_TARGET_WEIGHTS = flags.DEFINE_enum(
    "target_weights", "auto", ["auto", "float", "tiled"], "Target weights (models.arch.quantize)."
)
_DRAFT_WEIGHTS = flags.DEFINE_enum(
    "draft_weights", "auto", ["auto", "float", "tiled", "int8"], "Draft weight layout."
)
_DRAFT_VOCAB = flags.DEFINE_integer("draft_vocab", 0, "Restrict the draft head to N ids; 0 = all.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bar of a prompt file.")
_MESH = flags.DEFINE_string("mesh", "", "DATAxMODEL devices (all processes'); '' = one device.")
distributed.define_flags()


def _settings() -> dict:
    return dict(
        temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value,
        max_new_tokens=_MAX_NEW.value, seed=_SEED.value, stop=tuple(_STOP.value),
    )  # fmt: skip


def _check_flags() -> None:
    modes = [m for m, on in (("--prompt", _PROMPT.value is not None),
                             ("--prompts_file", _FILE.value is not None),
                             ("--chat", _CHAT.value)) if on]  # fmt: skip
    if len(modes) != 1:
        raise app.UsageError("give exactly one of --prompt, --prompts_file and --chat")
    if _FILE.value is not None and not _OUTPUT.value:
        raise app.UsageError("--prompts_file needs --output=OUT.jsonl")
    if _BATCH.value < 1:
        raise app.UsageError(f"--batch_size must be >= 1, got {_BATCH.value}")


def _load():
    from experiments.common import mesh as mesh_lib
    from experiments.text.generator import TextGenerator

    try:
        mesh = mesh_lib.mesh_from_string(_MESH.value)
    except ValueError as e:
        raise app.UsageError(f"--mesh: {e}") from None
    return TextGenerator.load(
        _TARGET.value, _DRAFT.value or None, dtype=_DTYPE.value,
        target_weights=_TARGET_WEIGHTS.value, draft_weights=_DRAFT_WEIGHTS.value,
        draft_vocab=_DRAFT_VOCAB.value, mesh=mesh,
    )  # fmt: skip


def _one_prompt(tg, err, out) -> None:
    prompt = _PROMPT.value
    if _CHAT_TEMPLATE.value:
        prompt = [{"role": "user", "content": prompt}]
    req = tg.request(_METHOD.value, **_settings())
    method = tg.method_text(_METHOD.value)
    ids = tg.encode(prompt)
    if _COMPARE.value:  # both compiled before either is timed
        ar = dataclasses.replace(req, method=methods.parse("ar"))
        tg.warm_up([ids], req)
        tg.warm_up([ids], ar)
    stream = tg.stream(prompt, method, **_settings())
    for piece in stream:
        out(piece)
    out("\n")
    done = stream.completion
    err(stats_line(method, done.stats) + f" finish: {done.finish_reason}")
    if _COMPARE.value:
        base = tg.decode_ids([ids], ar)[0]
        err(stats_line("ar", base.stats))
        ratio = done.stats.tokens_per_second / base.stats.tokens_per_second
        line = f"{method} / AR token rate: {ratio:.2f}x"
        if _TEMPERATURE.value == 0:
            line += f"; greedy texts identical: {'yes' if base.text == done.text else 'NO'}"
        err(line)


def _prompt_file(tg, err) -> None:
    from experiments.text import batch

    method = tg.method_text(_METHOD.value, _BATCH.value)
    defaults = {"method": method} | _settings()
    lines = batch.read_lines(_FILE.value, tg, defaults)
    setup = {"target": _TARGET.value, "draft": _DRAFT.value, "dtype": _DTYPE.value,
             "target_weights": _TARGET_WEIGHTS.value, "draft_weights": _DRAFT_WEIGHTS.value,
             "draft_vocab": _DRAFT_VOCAB.value, "batch_size": _BATCH.value}  # fmt: skip
    compare = None
    if _COMPARE.value:

        def compare(ids, req, keys, warm_up=False):
            ar = dataclasses.replace(req, method=methods.parse("ar"))
            if warm_up:
                return tg.warm_up(ids, ar)
            return tg.decode_ids(ids, ar, keys=keys)

    summary = batch.run(
        tg, lines, _OUTPUT.value, setup, batch_size=_BATCH.value, progress=_PROGRESS.value,
        compare=compare, log=err,
    )  # fmt: skip
    if not summary:  # not process 0
        return
    err(f"wrote {_OUTPUT.value}: {summary['lines']} lines ({summary['generated_now']} now)")
    if "tokens" in summary:
        err(f"{method}: {summary['tokens']} tokens in {summary['seconds']:.1f} s, "
            f"{summary['tokens_per_second']:.2f} tok/s, {summary['tokens_per_call']:.2f} "
            "tokens per target call")  # fmt: skip
    if "compare_tokens" in summary:
        err(f"ar: {summary['compare_tokens']} tokens in {summary['compare_seconds']:.1f} s, "
            f"{summary['compare_tokens_per_second']:.2f} tok/s; ratio "
            f"{summary['ratio_vs_compare']:.2f}x; identical greedy texts "
            f"{summary['identical_greedy_texts']}/{summary['greedy_lines']}")  # fmt: skip


def main(argv):
    del argv
    _check_flags()
    try:
        joined = distributed.initialize_from_flags()
    except distributed.DistributedError as e:
        raise SystemExit(f"error: {e}") from None
    if joined and _CHAT.value:
        raise SystemExit("error: a chat reads one terminal: run it as one process")
    main_process = distributed.is_main()
    if main_process:
        runtime.announce(lambda line: print(line, file=sys.stderr, flush=True))

    def err(line: str) -> None:
        if main_process:
            print(line, file=sys.stderr, flush=True)

    def out(text: str) -> None:
        if main_process:
            sys.stdout.write(text)
            sys.stdout.flush()

    from experiments.common.memory import InsufficientMemoryError
    from experiments.text.batch import BatchError
    from experiments.text.generator import GenerationError
    from models.errors import IncompatibleModelsError, ModelFileError

    try:
        tg = _load()
        err(f"weights: {tg.bundle.info.get('layout')}")
        if _PROMPT.value is not None:
            distributed.exit_on_peer_failure(lambda: _one_prompt(tg, err, out))
        elif _FILE.value is not None:
            distributed.exit_on_peer_failure(lambda: _prompt_file(tg, err))
        else:
            method = tg.method_text(_METHOD.value)
            session(tg, method, _settings(), note=err)
    except (
        GenerationError, BatchError, ModelFileError, IncompatibleModelsError,
        InsufficientMemoryError,
    ) as e:  # fmt: skip
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        raise SystemExit("interrupted") from None


if __name__ == "__main__":
    runtime.quiet_backend_probe()
    app.run(main)
