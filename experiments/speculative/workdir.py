"""The workdir of the ``speculative`` job: its files and the identity check of a rerun.

In ``--workdir``:

- ``config.json``: the config (``Settings.recorded``) and the models' description; a
  rerun whose result-affecting keys (:data:`COMPAT_KEYS`) or models differ is refused
  while ``results.jsonl`` holds a record (without one, the new config replaces the old).
- ``results.jsonl``: one line per (prompt, method), appended and fsynced as it completes
  (:mod:`experiments.common.records`); a rerun skips every key already there.
- ``calibration.json``: the acceptance table of ``auto_shape``
  (:mod:`experiments.speculative.calibration`).
- ``summary.json``, ``table.md``, ``shapes.md`` and PNG plots
  (:mod:`experiments.reporting`).
- ``.lock``: held by the run using the workdir (:func:`experiments.common.records.workdir_lock`).
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.common import strict_json
from experiments.speculative.settings import Sampling, Settings, paper_sampling

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
    "batch",
    "max_new_tokens",
    "max_prompt_tokens",
    "chat_template",
    "shakespeare_lines",
    "seed",
)  # and the sampling each dataset gets (:func:`sampling_by_dataset`)
# Keys added after workdirs existed, with the value that reproduces what those workdirs hold.
ADDED_KEYS = {"draft_vocab": 0, "draft_weights": "float", "target_weights": "float", "batch": 1}
CALIBRATION = "calibration.json"  # auto_shape's acceptance table
COSTS = "costs.json"  # auto_rate's forward seconds by scored tokens
RACE = "race.json"  # auto_rate's finalists timed on the calibration prompts
LAYOUT_KEYS = ("dtype", "target_weights", "draft_weights")  # models.layout of the info


class IncompatibleWorkdirError(ValueError):
    """The workdir holds results of a config that generated differently."""


def record_key(prompt_key: str, method_text: str) -> str:
    return f"{prompt_key}|{method_text}"


def has_results(workdir: Path) -> bool:
    """Whether ``results.jsonl`` holds a complete (newline-terminated) record line."""
    path = workdir / RESULTS
    if not path.is_file():
        return False
    raw = path.read_bytes()
    return bool(raw[: raw.rfind(b"\n") + 1].strip())


def stored_sampling(stored: dict, names) -> dict[str, tuple[float, float]]:
    """``{dataset: (temperature, top_p)}`` for ``names`` under a stored ``config.json``'s
    config.

    Configs stored before the ``sampling`` key had no such key, and there a
    ``temperature`` or ``top_p`` of ``-1`` meant the paper's per-dataset value.
    """
    t, p = stored.get("temperature", 1.0), stored.get("top_p", 1.0)
    if "sampling" in stored:
        fixed = Sampling(stored["sampling"], float(t), float(p))
        return {name: fixed.for_dataset(name) for name in names}
    paper = {name: paper_sampling(name) for name in names}
    return {name: (pt if t == -1 else t, pp if p == -1 else p) for name, (pt, pp) in paper.items()}


def _config_changes(workdir: Path, settings: Settings, info: dict | None) -> list[str]:
    """How ``settings`` (and the models' ``info``, if given) differ from the stored config."""
    path = workdir / CONFIG
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    stored = record.get("config", {})
    mine = {k: settings.recorded[k] for k in COMPAT_KEYS}
    old = {k: stored.get(k, ADDED_KEYS.get(k)) for k in COMPAT_KEYS}
    diff = [f"{k}: {old[k]!r} -> {mine[k]!r}" for k in COMPAT_KEYS if old[k] != mine[k]]
    names = settings.prompts.datasets
    was = stored_sampling(stored, names)
    now = {name: settings.sampling.for_dataset(name) for name in names}
    diff += [
        f"temperature, top_p of {name}: {was[name]} -> {now[name]}"
        for name in now
        if tuple(was[name]) != tuple(now[name])
    ]
    if info is not None and _stored_models(record, stored, "layout" in info) != info:
        diff.append("models differ")
    return diff


def _stored_models(record: dict, stored: dict, with_layout: bool):
    """The stored models' description; one written before the ``layout`` entry existed gets
    the one its config implies (no ``auto`` then: the keys named the layout used), when
    ``with_layout`` (the models loaded now describe theirs; sources without weights, such
    as the toy tables, do not)."""
    models = record.get("models")
    if with_layout and isinstance(models, dict) and "layout" not in models:
        used = {k: stored.get(k, ADDED_KEYS.get(k, "float32")) for k in LAYOUT_KEYS}
        models = models | {"layout": used}
    return models


def check_workdir(workdir: Path, settings: Settings, info: dict | None, log=None) -> None:
    """Refuses a workdir holding results of an incompatible config; stores this config.

    A workdir with a ``config.json`` but no result (no ``results.jsonl``, or one without
    a complete record, as a run that failed before its first record leaves it) is never
    refused: the new config replaces the stored one, and a calibration made under the
    old one is removed. With ``info=None`` (before the models are loaded) only the
    config keys are compared and nothing is written.
    """
    path = workdir / CONFIG
    diff = _config_changes(workdir, settings, info)
    results = has_results(workdir)
    if diff and results:
        raise IncompatibleWorkdirError(
            f"{workdir} holds results of an incompatible config ({'; '.join(diff)}); "
            "use a new --workdir or restore those settings"
        )
    if info is None:
        return
    if diff:  # no results: nothing made under the old config is kept
        for name in (CALIBRATION, COSTS, RACE):
            (workdir / name).unlink(missing_ok=True)
        if log is not None:
            log(f"{path} replaced: no results were made under it ({'; '.join(diff)})")
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    record = {"config": dict(settings.recorded), "models": info}
    tmp.write_text(strict_json.dumps(record, indent=2))
    tmp.replace(path)
