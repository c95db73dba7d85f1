"""Entry point: ``python -m experiments.run --config=experiments/configs/NAME.py[:k=v,...]``.

The only I/O layer: flags, files, clocks and printing live here and in the
job modules it dispatches to (by ``config.job``).
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from experiments import strict_json

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config .py file[:k=v,...].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results (optional for demos).")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache",
    "~/.cache/rsd_jax/xla",
    "Directory of JAX's persistent compilation cache: a rerun or resumed sweep reuses "
    "the compiled steps (minutes per shape on CPU) instead of recompiling. '' disables.",
)

JOBS = ("toy_demo", "speculative", "distill")
# Jobs that write a workdir: what it holds (for the usage error), and their module, whose
# run(config, workdir) does the job and which defines WorkdirBusyError.
WORKDIR_JOBS = {
    "speculative": "results, resumable",
    "distill": "checkpoints, the draft",
}
JOB_MODULES = {"speculative": "runner", "distill": "distill"}


def enable_compile_cache(path: str, min_compile_seconds: float = 1.0) -> str | None:
    """Points JAX's persistent compilation cache at ``path`` (``~`` expanded).

    Executables that took at least ``min_compile_seconds`` to compile are stored there
    and reused by later processes with the same program and shapes. Returns the
    directory, or None for an empty ``path``.
    """
    if not path:
        return None
    import jax

    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=experiments/configs/toy_demo.py")
    if config.job not in JOBS:
        raise app.UsageError(f"unknown job {config.job!r}; known jobs: {JOBS}")
    enable_compile_cache(_COMPILE_CACHE.value)
    if config.job in WORKDIR_JOBS:
        needs = WORKDIR_JOBS[config.job]
        if not _WORKDIR.value:
            raise app.UsageError(f"the {config.job} job needs --workdir=DIR ({needs})")
        _run_workdir_job(config, _WORKDIR.value)
        return
    from experiments import toy_demo, validate

    try:
        validate.validate(config)  # toy_demo.run checks too; here it ends in one line
    except validate.ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    rows = toy_demo.run(config)
    print(toy_demo.format_table(rows, config.rounds))
    if _WORKDIR.value:
        save_toy_summary(_WORKDIR.value, config, rows)


def _run_workdir_job(config, workdir: str) -> None:
    """Runs a job that writes a workdir; its expected failures end in one line."""
    import importlib

    from experiments.datasets import DatasetMissingError

    module = importlib.import_module(f"experiments.{JOB_MODULES[config.job]}")
    try:
        module.run(config, workdir)
    except (ValueError, DatasetMissingError, module.WorkdirBusyError) as e:
        # bad config, incompatible or busy workdir, damaged results, missing data
        raise SystemExit(f"error: {e}") from None


def save_toy_summary(workdir: str, config, rows: list[dict]) -> str:
    """Writes the toy demo's ``summary.json`` (standard JSON: AR's TV is ``null``)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "summary.json")
    with open(path, "w") as f:
        strict_json.dump({"config": config.to_dict(), "rows": rows}, f, indent=2)
    return path


if __name__ == "__main__":
    app.run(main)
