"""The ``speculative`` job: real-model generation over prompts x methods, resumable.

Launch through ``experiments/run.py`` with one of ``experiments/configs/{default,
fixed_length,fixed_budget}.py``. In ``--workdir``:

- ``config.json``: the config and the models' description; a rerun whose
  result-affecting keys (:data:`COMPAT_KEYS`) or models differ is refused while
  ``results.jsonl`` holds a record (without one, the new config replaces the old).
- ``results.jsonl``: one line per (prompt, method), appended (and fsynced) as soon as
  it completes. A rerun skips every key already there; a partial last line left by a
  kill is dropped, and any other line that is not a record is an error naming the
  file and line (:class:`DamagedResultsError`), raised before the models load.
- ``summary.json``, ``table.md``, ``shapes.md`` and PNG plots (see :mod:`experiments.report`).
- ``.lock``: held (``fcntl.flock``) by the run using the workdir, so a second concurrent
  run on it fails at once (:class:`WorkdirBusyError`); the lock goes when the run ends,
  however it ends (the file stays, holding the last run's pid).

Timing: before a method's first timed prompt its programs are compiled by a warm-up
(prefill + a decoding loop that runs no round), so compile time is not measured. Each
record's ``seconds`` is wall-clock from prefill to the last round, inclusive (split into
``prefill_seconds`` and ``decode_seconds``; ``round_seconds`` is decode time per target
call; ``python -m experiments.bench_decode`` breaks a round into its phases). Work runs
prompt by prompt, all methods of a prompt in turn, so a slow phase of a shared machine
lands on every method rather than on whichever method happened to run then.
Randomness: the key of a prompt is ``fold_in(PRNGKey(seed), crc32(prompt key))`` for every
method (common random numbers), so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np

from experiments import plan as plan_lib
from experiments import report, shape_search, sources, strict_json, validate
from rsd_jax import decode, methods, sharding, transforms
from rsd_jax import generate as gen

RESULTS, CONFIG, SUMMARY, TABLE, SHAPES = (
    "results.jsonl",
    "config.json",
    "summary.json",
    "table.md",
    "shapes.md",
)
# Keys that change what a (prompt, method) record holds; the rest select which work to do.
COMPAT_KEYS = (
    "target",
    "draft",
    "draft_vocab",
    "dtype",
    "dataset",
    "max_new_tokens",
    "max_prompt_tokens",
    "chat_template",
    "shakespeare_lines",
    "temperature",
    "top_p",
    "seed",
)
AR = "ar"  # the method text of plain decoding, the reference of every speed ratio
# Keys added after workdirs existed, with the value that reproduces what those workdirs hold.
ADDED_KEYS = {"draft_vocab": 0}
TIMING_FIELDS = ("seconds", "prefill_seconds", "decode_seconds", "round_seconds")


LOCK = ".lock"


class IncompatibleWorkdirError(ValueError):
    """The workdir holds results of a config that generated differently."""


class DamagedResultsError(ValueError):
    """A complete line of ``results.jsonl`` is not a record (the message names the line)."""


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir's lock."""


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Holds the exclusive lock of ``workdir`` (creating it) for one run.

    ``fcntl.flock`` on ``WORKDIR/.lock``: the kernel releases it when the file is closed
    or the process dies, so a killed run never leaves a stale lock. The holder's pid is
    written into the file for the message of the run that is refused.

    Raises:
      WorkdirBusyError: another process (or another open of the file) holds the lock.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise WorkdirBusyError(
                f"{workdir} is in use by another run (pid {holder}, lock {path}); wait for "
                "it to finish or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def record_key(prompt_key: str, method_text: str) -> str:
    return f"{prompt_key}|{method_text}"


def has_results(workdir: Path) -> bool:
    """Whether ``results.jsonl`` holds a complete (newline-terminated) record line."""
    path = workdir / RESULTS
    if not path.is_file():
        return False
    raw = path.read_bytes()
    return bool(raw[: raw.rfind(b"\n") + 1].strip())


def _config_changes(workdir: Path, config, info: dict | None) -> list[str]:
    """How ``config`` (and the models' ``info``, if given) differ from the stored config."""
    path = workdir / CONFIG
    if not path.is_file():
        return []
    stored = json.loads(path.read_text())
    mine = {k: config[k] for k in COMPAT_KEYS}
    old = {k: stored.get("config", {}).get(k, ADDED_KEYS.get(k)) for k in COMPAT_KEYS}
    diff = [f"{k}: {old[k]!r} -> {mine[k]!r}" for k in COMPAT_KEYS if old[k] != mine[k]]
    if info is not None and stored.get("models") != info:
        diff.append("models differ")
    return diff


def check_workdir(workdir: Path, config, info: dict | None, log=None) -> None:
    """Refuses a workdir holding results of an incompatible config; stores this config.

    A workdir with a ``config.json`` but no result (no ``results.jsonl``, or one without
    a complete record, as a run that failed before its first record leaves it) is never
    refused: the new config replaces the stored one, and a calibration made under the
    old one is removed. With ``info=None`` (before the models are loaded) only the
    config keys are compared and nothing is written.
    """
    path = workdir / CONFIG
    diff = _config_changes(workdir, config, info)
    results = has_results(workdir)
    if diff and results:
        raise IncompatibleWorkdirError(
            f"{workdir} holds results of an incompatible config ({'; '.join(diff)}); "
            "use a new --workdir or restore those settings"
        )
    if info is None:
        return
    if diff:  # no results: nothing made under the old config is kept
        (workdir / CALIBRATION).unlink(missing_ok=True)
        if log is not None:
            log(f"{path} replaced: no results were made under it ({'; '.join(diff)})")
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(strict_json.dumps({"config": config.to_dict(), "models": info}, indent=2))
    tmp.replace(path)


def load_records(path: Path) -> dict[str, dict]:
    """Records by key; a partial last line (killed mid-write) is cut off the file.

    Raises:
      DamagedResultsError: a complete (newline-terminated) line is not a JSON record
        with a ``key``; the message names the file and the line number.
    """
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    out = {}
    for number, line in enumerate(complete.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            problem = "" if isinstance(rec, dict) and "key" in rec else "no record key"
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            problem = str(e)
        if problem:
            raise DamagedResultsError(
                f"{path}, line {number}: damaged result record ({problem}); delete or repair "
                "that line (the run then redoes only its record) and rerun"
            )
        out[rec["key"]] = rec
    if len(complete) < len(raw):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    return out


def append_record(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(strict_json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def prompt_rng_key(seed: int, prompt_key: str) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(prompt_key.encode()) >> 1)


def _bucket(prompts) -> int:
    longest = max(len(p.ids) for p in prompts)
    return max(32, -(-longest // 32) * 32)


class _Generator:
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


def _mesh_sizes(config) -> tuple[int, int] | None:
    """``config.mesh`` as (data, model), or None; checked before any model is loaded."""
    sizes = sharding.parse_mesh(config.mesh)
    if sizes is not None and sizes[0] != 1:
        raise ValueError(
            f"mesh {config.mesh!r}: the speculative job decodes one prompt at a time, so the "
            f"data axis must be 1; use mesh=1x{sizes[0] * sizes[1]} (tensor parallel)"
        )
    if sizes is not None and sizes[0] * sizes[1] != jax.device_count():
        raise ValueError(
            f"mesh {config.mesh!r} needs {sizes[0] * sizes[1]} devices, "
            f"{jax.device_count()} are available"
        )
    return sizes


CALIBRATION = "calibration.json"


def calibrate(
    config, bundle, prompts, bucket, workdir: Path, log, layout=None, evaluated=()
) -> shape_search.AcceptanceTable:
    """``shape=auto``: acceptance by depth and sibling rank on the calibration prompts.

    Decodes each calibration prompt for ``calibration_tokens`` tokens with
    ``rsd_c:<calibration_shape>`` and probes on, pools the exact ``A_d(b)`` sums
    (:mod:`rsd_jax.probes`) and stores them in ``WORKDIR/calibration.json``. A rerun
    reuses the stored calibration when its method, length and number of prompts match
    and none of its prompts is among the ``evaluated`` prompts (so growing
    ``num_prompts`` keeps it).
    """
    text = f"rsd_c:{config.calibration_shape}"
    method = methods.parse(text)
    tokens = int(config.calibration_tokens)
    settings = dict(method=text, prompts=[p.key for p in prompts], max_new=tokens)
    path = workdir / CALIBRATION
    if path.is_file():
        stored = json.loads(path.read_text())
        old = stored.get("settings", {})
        same = (old.get("method"), old.get("max_new")) == (text, tokens)
        used = old.get("prompts", [])
        if same and len(used) == len(prompts) and not set(used) & {p.key for p in evaluated}:
            log(f"calibration reused from {path} (prompts {', '.join(used)})")
            return shape_search.AcceptanceTable.from_json(stored["table"])
    gen_ = _Generator(bundle, method, bucket, tokens, layout, probes=True)
    sums, counts = [], []
    for p in prompts:
        log(f"calibrating with {text} on {p.key} ({tokens} tokens)")
        rec = gen_(p, prompt_rng_key(config.seed + 1, p.key))
        sums.append(rec["rank_accept"])
        counts.append(rec["rank_count"])
    table = shape_search.calibration_table(sums, counts)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(strict_json.dumps({"settings": settings, "table": table.to_json()}, indent=2))
    tmp.replace(path)
    return table


# Calibration prompts come from another seeded draw than the evaluated ones, so they
# do not move into (or out of) the evaluated set when num_prompts grows.
CALIBRATION_SEED_OFFSET = 7919


def _calibration_prompts(config, bundle, prompt_source, evaluated) -> list:
    """``calibration_prompts`` prompts of the same datasets, none of them evaluated.

    Spread round-robin over the datasets like the evaluated ones, drawn with the seed
    ``seed + CALIBRATION_SEED_OFFSET``.
    """
    more = config.copy_and_resolve_references()
    more.unlock()
    more.seed = config.seed + CALIBRATION_SEED_OFFSET
    more.num_prompts = config.calibration_prompts + len(evaluated)
    keys = {p.key for p in evaluated}
    by_dataset: dict[str, list] = {}
    for p in prompt_source(more, bundle):
        if p.key not in keys:
            by_dataset.setdefault(p.dataset, []).append(p)
    picked, queues = [], list(by_dataset.values())
    while len(picked) < config.calibration_prompts and any(queues):
        for q in queues:
            if q and len(picked) < config.calibration_prompts:
                picked.append(q.pop(0))
    if not picked:
        raise ValueError("shape=auto found no calibration prompts beyond the evaluated ones")
    return picked


def _progress(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional
        enabled = False
    if not enabled:

        class _Null:
            def update(self, n=1):
                pass

            def set_description(self, text):
                pass

            def close(self):
                pass

        return _Null()
    return tqdm(total=total, unit="gen", file=sys.stderr, dynamic_ncols=True)


def run(
    config,
    workdir: str | os.PathLike,
    *,
    model_source: Callable | None = None,
    prompt_source: Callable | None = None,
    on_record: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs (or resumes) the job in ``workdir``; returns the summary.

    Args:
      config: a locked config of the ``speculative`` job.
      workdir: results directory (created).
      model_source: ``(config) -> sources.Bundle``; default loads the real models.
      prompt_source: ``(config, bundle) -> [sources.EncodedPrompt]``; default reads datasets.
      on_record: called with each new record after it is written (tests interrupt here).
      log: where messages go.

    Raises:
      ValueError: a bad config (:class:`experiments.validate.ConfigError`: every key,
        then methods and shapes), before anything is loaded or written.
      IncompatibleWorkdirError: see :func:`check_workdir`.
      WorkdirBusyError: another run is using ``workdir`` (see :func:`workdir_lock`).
    """
    validate.validate(config)  # every key, methods, shapes: before loading or writing
    specs = plan_lib.plan(config)
    mesh_sizes = _mesh_sizes(config)
    workdir = Path(workdir)
    with workdir_lock(workdir):
        return _run_locked(
            config, workdir, specs, mesh_sizes, model_source, prompt_source, on_record, log
        )


def _run_locked(
    config, workdir, specs, mesh_sizes, model_source, prompt_source, on_record, log
) -> dict:
    """The body of :func:`run`, with the config valid and the workdir locked."""
    check_workdir(workdir, config, None)  # fail fast, before loading models
    path = workdir / RESULTS
    records = load_records(path)  # a damaged file fails here, before loading models
    shapes = plan_lib.describe(specs)
    log("Shapes used (B = draft nodes scored per target call, root excluded):\n" + shapes)
    start = time.perf_counter()
    bundle = (model_source or sources.real_models)(config)
    check_workdir(workdir, config, bundle.info, log)
    layout = None
    if mesh_sizes is not None:
        mesh = sharding.make_mesh(*mesh_sizes)
        bundle = bundle._replace(
            target=sharding.place_model(bundle.target, mesh),
            draft=sharding.place_model(bundle.draft, mesh),
        )
        layout = sharding.Layout.for_models(mesh, bundle.target, bundle.draft)
        log(f"mesh {mesh_sizes[0]}x{mesh_sizes[1]} (data x model) over {mesh.devices.size} devices")
    (workdir / SHAPES).write_text(shapes + "\n")
    log(
        f"models ready in {time.perf_counter() - start:.1f}s: {bundle.info.get('target')} <- "
        f"{bundle.info.get('draft')} (r = {bundle.draft_params / bundle.target_params:.4f})"
    )
    prompt_source = prompt_source or sources.real_prompts
    prompts = prompt_source(config, bundle)
    if not prompts:
        raise ValueError("no prompts selected (num_prompts=0?)")
    bucket = _bucket(prompts)
    if config.shape == "auto":
        calib_prompts = _calibration_prompts(config, bundle, prompt_source, prompts)
        calib_bucket = max(bucket, _bucket(calib_prompts))
        table = calibrate(
            config, bundle, calib_prompts, calib_bucket, workdir, log, layout, prompts
        )
        log("Calibrated acceptance A_d(b) (mean, visited nodes):\n" + shape_search.describe(table))
        specs = plan_lib.plan(config, table)
        shapes = plan_lib.describe(specs)
        log("Shapes with shape=auto:\n" + shapes)
        (workdir / SHAPES).write_text(shapes + "\n")
    texts = list(dict.fromkeys(s.text for s in specs))
    # Prompt-major: methods alternate, so load drift on the machine hits all of them alike.
    # A prompt with work to do times AR again in this invocation (its record is replaced):
    # ratios vs AR pair records of one invocation only, never rates from two runs.
    invocation = f"{time.time_ns():x}"
    pending = []
    for p in prompts:
        todo = [t for t in texts if record_key(p.key, t) not in records]
        if todo and AR in texts and AR not in todo:
            todo = [t for t in texts if t == AR or t in todo]
        pending += [(p, t) for t in todo]
    total = len(pending)
    log(
        f"{len(prompts)} prompts x {len(texts)} methods: {total} to run, "
        f"{sum(record_key(p.key, t) in records for p in prompts for t in texts)} already in "
        f"{path}"
    )
    generators: dict[str, _Generator] = {}
    bar = _progress(total, config.progress)
    try:
        for p, text in pending:
            if text not in generators:  # compile on first use (warm-up, untimed)
                bar.set_description(f"compiling {text}")
                generators[text] = _Generator(
                    bundle,
                    methods.parse(text),
                    bucket,
                    config.max_new_tokens,
                    layout,
                    probes=config.probes,
                )
                generators[text].warm_up(p)
            runner = generators[text]
            bar.set_description(text)
            out = runner(p, prompt_rng_key(config.seed, p.key))
            rec = dict(key=record_key(p.key, text), prompt=p.key, dataset=p.dataset,
                       method=text, name=runner.method.name, temperature=p.temperature,
                       top_p=p.top_p, invocation=invocation) | out  # fmt: skip
            append_record(path, rec)
            records[rec["key"]] = rec
            bar.update(1)
            if on_record is not None:
                on_record(rec)
    finally:
        bar.close()
    nonfinite = sorted(k for k, r in records.items() if r.get("nonfinite_draft_rounds"))
    if nonfinite:
        log(
            f"warning: the draft's logits were NaN or infinite in some rounds of {len(nonfinite)}"
            f" records (e.g. {nonfinite[0]}); outputs stay exact but acceptance drops there"
        )
    zero = sorted(k for k, r in records.items() if r.get("zero_prob_draft_rounds"))
    if zero:
        log(
            f"warning: {len(zero)} records (e.g. {zero[0]}) drafted tokens whose recorded draft "
            "probability is 0; the verifiers rejected them, but this is a drafting bug: the law "
            "a token is drawn from and the law recorded for it disagree"
        )
    summary = report.summarize(config, specs, prompts, records, bundle)
    summary["wall_seconds_this_invocation"] = time.perf_counter() - start
    (workdir / SUMMARY).write_text(strict_json.dumps(summary, indent=2))
    table = report.format_table(summary)
    (workdir / TABLE).write_text(table + "\n")
    if config.plots:
        summary["plots"] = report.plot(summary, workdir)
    log(table)
    return summary
