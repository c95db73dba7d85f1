"""The workdir of the ``speculative`` job: its files, identity check, records and lock.

In ``--workdir``:

- ``config.json``: the config and the models' description; a rerun whose
  result-affecting keys (:data:`COMPAT_KEYS`) or models differ is refused while
  ``results.jsonl`` holds a record (without one, the new config replaces the old).
- ``results.jsonl``: one line per (prompt, method), appended (and fsynced) as soon as
  it completes. A rerun skips every key already there; a partial last line left by a
  kill is dropped, and any other line that is not a record is an error naming the
  file and line (:class:`DamagedResultsError`), raised before the models load.
- ``calibration.json``: the acceptance table of ``auto_shape`` (:mod:`experiments.calibration`).
- ``summary.json``, ``table.md``, ``shapes.md`` and PNG plots (see :mod:`experiments.report`).
- ``.lock``: held (``fcntl.flock``) by the run using the workdir, so a second concurrent
  run on it fails at once (:class:`WorkdirBusyError`); the lock goes when the run ends,
  however it ends (the file stays, holding the last run's pid).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from experiments import sources, strict_json

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
    "draft_weights",
    "target_weights",
    "dtype",
    "dataset",
    "max_new_tokens",
    "max_prompt_tokens",
    "chat_template",
    "shakespeare_lines",
    "seed",
)  # and the sampling each dataset gets (:func:`sampling_by_dataset`)
# Keys added after workdirs existed, with the value that reproduces what those workdirs hold.
ADDED_KEYS = {"draft_vocab": 0, "draft_weights": "float", "target_weights": "float"}
CALIBRATION = "calibration.json"

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


def sampling_by_dataset(config) -> dict[str, tuple[float, float]]:
    """``{dataset: (temperature, top_p)}`` of a config, or of a stored ``config.json``'s.

    Stored configs written before the ``sampling`` key had no such key, and there a
    ``temperature`` or ``top_p`` of ``-1`` meant the paper's per-dataset value.
    """
    names = [x.strip() for x in config["dataset"].split("+") if x.strip()]
    if "sampling" in config:
        return {name: sources.sampling_for(config, name) for name in names}
    t, p = config["temperature"], config["top_p"]
    paper = {name: sources.paper_sampling(name) for name in names}
    return {name: (pt if t == -1 else t, pp if p == -1 else p) for name, (pt, pp) in paper.items()}


def _config_changes(workdir: Path, config, info: dict | None) -> list[str]:
    """How ``config`` (and the models' ``info``, if given) differ from the stored config."""
    path = workdir / CONFIG
    if not path.is_file():
        return []
    stored = json.loads(path.read_text())
    mine = {k: config[k] for k in COMPAT_KEYS}
    old = {k: stored.get("config", {}).get(k, ADDED_KEYS.get(k)) for k in COMPAT_KEYS}
    diff = [f"{k}: {old[k]!r} -> {mine[k]!r}" for k in COMPAT_KEYS if old[k] != mine[k]]
    was = sampling_by_dataset(stored.get("config", {}) | {"dataset": config.dataset})
    now = sampling_by_dataset(config)
    diff += [
        f"temperature, top_p of {name}: {was[name]} -> {now[name]}"
        for name in now
        if tuple(was[name]) != tuple(now[name])
    ]
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
