"""Runs the paper's experiment on the real pair and writes its report.

    python -m experiments.paper run --root=/work/runs/paper          # resumable, ~7 h
    python -m experiments.paper report --root=/work/runs/paper --out=docs/paper

``run`` works through stages, one real-model process at a time: for each draft regime its
greedy check (every method's output at T = 0 must equal AR's), then for each prompt count
of ``--prompts`` (8, 16, ... prompts in all, a quarter per task), the fixed-budget sweep,
the fixed-length sweep, the paper's Table shapes and the calibrated shapes
(``auto_shape`` and ``auto_rate``, per budget), each an ``experiments.run`` of the
``speculative`` job into the regime's workdir. A stage that finished is never run again
(``ROOT/stages.jsonl`` holds each one's wall time); an interrupted stage resumes from its
records. Growing ``--prompts`` later adds prompts to
what is there. ``report`` needs no model: figures and findings from the records.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from experiments.paper.regimes import DEFAULT_PROMPTS, DEFAULT_REGIMES, REGIMES, Regime

TASKS = "summarise+translate+chat+humaneval"
COMMON = f"dataset={TASKS},probes=true,progress=false"


def stage_commands(regime: Regime, root: Path, num_prompts: int) -> list[tuple[str, list[str]]]:
    """``(stage, argv)`` of one prompt count of a regime, in the order they run."""
    draft = regime.draft_arg(root)
    workdir = f"--workdir={root / regime.name}"
    base = f"{COMMON},draft={draft},num_prompts={num_prompts}"
    sweep = f"{base},method=sd+spectr+rsd_c+rsd_s"
    from experiments.paper.load import TABLE_METHODS

    table = f"{base},sweep=none,method={TABLE_METHODS}"
    auto = f"{sweep},auto_shape=true,auto_rate=true"
    run = [sys.executable, "-m", "experiments.run"]
    return [
        ("budget", [*run, f"--config=experiments/configs/fixed_budget.py:{sweep}", workdir]),
        ("length", [*run, f"--config=experiments/configs/fixed_length.py:{sweep}", workdir]),
        ("table", [*run, f"--config=experiments/configs/fixed_budget.py:{table}", workdir]),
        ("auto", [*run, f"--config=experiments/configs/fixed_budget.py:{auto}", workdir]),
    ]


LOSSLESS_METHODS = "ar+sd:5+mrs:2x3+spectr:2x3+rsd_c:2-1-1-1+rsd_s:2x4+rsd_c:3-2-1+rsd_s:6x5"


def lossless_command(regime: Regime, root: Path) -> list[str]:
    """The regime's greedy check: at T = 0 every method must reproduce AR's output exactly
    (``matches_ar`` in ``ROOT/<regime>_lossless/summary.json``)."""
    draft = regime.draft_arg(root)
    keys = (
        f"sampling=fixed,temperature=0,dataset={TASKS},num_prompts=8,max_new_tokens=64,"
        f"progress=false,draft={draft},method={LOSSLESS_METHODS}"
    )
    return [
        sys.executable,
        "-m",
        "experiments.run",
        f"--config=experiments/configs/default.py:{keys}",
        f"--workdir={root / (regime.name + '_lossless')}",
    ]


def distill_command(regime: Regime, root: Path) -> list[str]:
    """The distil job that makes the regime's draft (resumable)."""
    return [
        sys.executable,
        "-m",
        "experiments.run",
        f"--config={regime.distill_config}",
        f"--workdir={regime.distill_dir(root)}",
    ]


def _done(root: Path) -> set[tuple]:
    path = root / "stages.jsonl"
    if not path.is_file():
        return set()
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {(r["regime"], r["stage"], r["num_prompts"]) for r in rows}


def _stage(root: Path, regime: str, stage: str, num: int, argv: list[str], dry: bool) -> None:
    print(f"== {regime} {stage} ({num} prompts): {' '.join(argv)}", flush=True)
    if dry:
        return
    log = root / f"{regime}_{stage}_{num}.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"stage {regime} {stage} ({num} prompts) failed with exit {rc}: see {log}")
    row = dict(
        regime=regime,
        stage=stage,
        num_prompts=num,
        seconds=time.perf_counter() - start,
        finished=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    with open(root / "stages.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def run(args) -> None:
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    counts = [int(x) for x in args.prompts.split("+")]
    if any(n < 1 for n in counts) or counts != sorted(counts):
        sys.exit(f"--prompts takes increasing counts >= 1 such as 8+16, got {args.prompts!r}")
    unknown = set(args.regimes.split("+")) - set(REGIMES)
    if unknown:
        sys.exit(f"unknown regimes {sorted(unknown)}; choose from {sorted(REGIMES)}")
    done = _done(root)
    for name in args.regimes.split("+"):
        regime = REGIMES[name]
        if regime.distill and (name, "distill", 0) not in done:
            _stage(root, name, "distill", 0, distill_command(regime, root), args.dry_run)
        if (name, "lossless", 0) not in done:
            _stage(root, name, "lossless", 0, lossless_command(regime, root), args.dry_run)
        for num in counts:
            for stage, argv in stage_commands(regime, root, num):
                if (name, stage, num) not in done:
                    _stage(root, name, stage, num, argv, args.dry_run)


def report(args) -> None:
    from experiments.paper import report as report_lib

    root = Path(args.root)
    path = report_lib.write(root, list(REGIMES.values()), Path(args.out))
    print(f"wrote {path} and its figures")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.paper",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the stages (resumable)")
    r.add_argument("--root", required=True, help="directory of the regimes' workdirs")
    r.add_argument(
        "--regimes", default="+".join(DEFAULT_REGIMES), help=f"of {sorted(REGIMES)}, '+'"
    )
    r.add_argument("--prompts", default=DEFAULT_PROMPTS, help="prompt counts in all, increasing")
    r.add_argument("--dry_run", action="store_true", help="print the commands only")
    p = sub.add_parser("report", help="figures and findings.md from the records")
    p.add_argument("--root", required=True)
    p.add_argument("--out", default="docs/paper")
    args = parser.parse_args(argv)
    {"run": run, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
