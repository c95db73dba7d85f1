"""Files a resumable job keeps in its workdir: the lock, and JSONL records written one by one.

- :func:`workdir_lock`: ``WORKDIR/.lock``, held (``fcntl.flock``) by the run using the
  workdir, so a second concurrent run on it fails at once (:class:`WorkdirBusyError`); the
  lock goes when the run ends, however it ends (the file stays, holding the last run's pid).
- :func:`append_record` / :func:`load_records`: one JSON line per finished unit of work,
  fsynced as soon as it completes; a partial last line left by a kill is dropped, any other
  line that is not a record is an error naming the file and line
  (:class:`DamagedResultsError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from experiments.common import strict_json

LOCK = ".lock"


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
