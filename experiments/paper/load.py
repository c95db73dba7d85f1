"""A workdir of the ``speculative`` job read back for the paper's report.

One workdir per draft regime holds every perspective: the fixed-budget sweep, the
fixed-length sweep and the paper's Table shapes run in it one after another (records are
keyed by prompt and method, so a shape two perspectives share runs once). Each run times
AR again for its own prompts, so ``results.jsonl`` keeps one AR line per prompt and
invocation; a method's token rate is paired with the AR of its own invocation.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from experiments.configs import common
from experiments.speculative import plan as plan_lib
from experiments.speculative import race, shape_search
from experiments.speculative import settings as settings_lib
from experiments.speculative import workdir as workdir_lib

SWEEP_METHODS = "sd+spectr+rsd_c+rsd_s"
# The paper's Table (Llama 2-7B target, 115M draft, XSum, T = 0.3): shape -> block efficiency.
PAPER_TABLE = {
    "sd:2": 2.166,
    "spectr:2x2": 2.218,
    "rsd_c:2-2": 2.398,
    "rsd_s:3x2": 2.432,
    "rsd_c:2-2-2": 2.868,
    "rsd_s:4x3": 2.970,
    "rsd_s:5x4": 3.427,
    "rsd_s:6x5": 3.811,
    "rsd_s:12x5": 4.073,
}
TABLE_METHODS = "ar+" + "+".join(PAPER_TABLE)
PERSPECTIVES = ("length", "budget", "table", "auto")
ALL = "all tasks"  # the tasks pooled: paired comparisons over every prompt


@dataclasses.dataclass(frozen=True)
class Workdir:
    """The records of one draft regime.

    Attributes:
      path: the workdir.
      regime: its name in figures and tables (e.g. ``0.5B draft``).
      config: the stored flat config (``config.json``).
      r: draft / target parameters read per call (the MBSU's ``r``).
      records: the newest record of each ``prompt|method`` key.
      ar: AR records by ``(prompt, invocation)``.
      tasks: prompt keys by dataset, in prompt order (those with an AR record).
      invocations: ``{invocation: (start in Unix seconds, seconds of timed decoding)}``
        over every line, replaced ones included.
    """

    path: Path
    regime: str
    config: dict
    r: float
    records: dict
    ar: dict
    tasks: dict
    invocations: dict = dataclasses.field(default_factory=dict)

    def prompts(self, task: str) -> list[str]:
        """The prompt keys of ``task``; :data:`ALL`: every task's, pooled."""
        if task == ALL:
            return [p for keys in self.tasks.values() for p in keys]
        return self.tasks.get(task, [])

    @property
    def task_names(self) -> list[str]:
        """The tasks, then :data:`ALL` when there are several."""
        return [*self.tasks, ALL] if len(self.tasks) > 1 else list(self.tasks)

    def record(self, prompt: str, text: str) -> dict | None:
        return self.records.get(f"{prompt}|{text}")

    def ar_of(self, rec: dict) -> dict | None:
        """The AR record timed in the same invocation as ``rec`` (same prompt)."""
        return self.ar.get((rec["prompt"], rec.get("invocation")))

    def sampling(self, task: str) -> tuple[float, float]:
        """``(temperature, top_p)`` of the task's records (NaN for none or :data:`ALL`)."""
        recs = [self.records[k] for k in self.records if k.startswith(task + "/")]
        return (recs[0]["temperature"], recs[0]["top_p"]) if recs else (float("nan"),) * 2


def _lines(path: Path) -> list[dict]:
    raw = path.read_bytes() if path.is_file() else b""
    complete = raw[: raw.rfind(b"\n") + 1].decode("utf-8")
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _started(invocation: str) -> float:
    """The Unix time an invocation id (``time.time_ns()`` in hex) names; NaN if none."""
    try:
        return int(invocation, 16) / 1e9
    except ValueError:
        return float("nan")


def read(path: str | Path, regime: str | None = None) -> Workdir:
    """Reads ``config.json`` and every line of ``results.jsonl`` of ``path``.

    Raises:
      FileNotFoundError: ``path`` has no ``config.json`` (not a workdir of the job).
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a workdir of the speculative job (no config.json)")
    stored = json.loads((path / "config.json").read_text())
    models = stored.get("models", {})
    r = models["draft_params"] / models["target_params"]
    records, ar, tasks, invocations = {}, {}, {}, {}
    for rec in _lines(path / "results.jsonl"):
        records[rec["key"]] = rec
        inv = rec.get("invocation")
        if inv:
            start, busy = invocations.get(inv, (_started(inv), 0.0))
            invocations[inv] = (start, busy + rec["seconds"])
        if rec["method"] == "ar":
            ar[(rec["prompt"], rec.get("invocation"))] = rec
            tasks.setdefault(rec["dataset"], [])
            if rec["prompt"] not in tasks[rec["dataset"]]:
                tasks[rec["dataset"]].append(rec["prompt"])
    name = regime or f"{models.get('draft', '?')} draft"
    return Workdir(path, name, stored["config"], r, records, ar, tasks, invocations)


def calibration(wd: Workdir):
    """``(AcceptanceTable, CostCurves or None)`` of the workdir's ``auto_shape`` run, or
    ``(None, None)`` when it has none."""
    path = wd.path / "calibration.json"
    if not path.is_file():
        return None, None
    table = shape_search.AcceptanceTable.from_json(json.loads(path.read_text())["table"])
    costs = wd.path / "costs.json"
    if not costs.is_file():
        return table, None
    return table, shape_search.CostCurves.from_json(json.loads(costs.read_text())["curves"])


def raced(wd: Workdir) -> str | None:
    """The method text that won ``auto_rate``'s race (``race.json``), or None."""
    path = wd.path / workdir_lib.RACE
    if not path.is_file():
        return None
    return race.winner(json.loads(path.read_text())["rates"])


def specs(wd: Workdir, perspective: str) -> list[plan_lib.RunSpec]:
    """The run specs (AR excluded) of one perspective under the workdir's stored config;
    ``auto``: the shapes ``auto_shape`` (and ``auto_rate``) chose, from the stored
    calibration (none without one)."""
    if perspective not in PERSPECTIVES:
        raise ValueError(f"unknown perspective {perspective!r}; choose one of {PERSPECTIVES}")
    sweep = {"table": "none", "auto": "budget"}.get(perspective, perspective)
    method = TABLE_METHODS if perspective == "table" else SWEEP_METHODS
    keys = {k: v for k, v in wd.config.items() if k in common.SPECULATIVE_DEFAULTS}
    keys |= dict(sweep=sweep, method=method, auto_shape=False, auto_rate=False)
    table = costs = None
    if perspective == "auto":
        table, costs = calibration(wd)
        if table is None:
            return []
        keys |= dict(auto_shape=True, auto_rate=costs is not None)
    settings = settings_lib.from_config(common.speculative(None, **keys))
    fastest = raced(wd) if costs is not None else None
    out = [s for s in plan_lib.plan(settings, table, costs, fastest) if s.text != "ar"]
    if perspective == "auto":
        out = [s for s in out if s.note.startswith(plan_lib.AUTO_NOTE)]
    return out
