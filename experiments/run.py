"""Entry point: ``python -m experiments.run --config=experiments/configs/NAME.py[:k=v,...]``.

The config's ``job`` names the package that runs it (:data:`JOBS`): each has a
``settings.from_config`` that checks every key and returns the job's typed settings, and a
``job.run`` that takes them. Flags, files, clocks and printing live here and in those
packages. A bad config, a bad workdir or missing data end in one line, no traceback.

Several processes (hosts) run one ``speculative`` job with ``--coordinator_address``,
``--num_processes`` and ``--process_id`` on each (none where JAX finds the cluster itself)
and a config ``mesh`` spanning every process's devices; see docs/multi_device.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments.common import distributed, runtime, strict_json

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config .py file[:k=v,...].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results (optional for demos).")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache",
    "~/.cache/rsd_jax/xla",
    "Directory of JAX's persistent compilation cache: a rerun or resumed sweep reuses "
    "the compiled steps (minutes per shape on CPU) instead of recompiling. '' disables.",
)

distributed.define_flags()

# job -> (its package under experiments/, what its --workdir holds; None: no workdir needed)
JOBS = {
    "speculative": ("speculative", "results, resumable"),
    "distill": ("distill", "checkpoints, the draft"),
    "toy_demo": ("toy_demo", None),
}


def config_error(argv: list[str]) -> str | None:
    """The one-line error of the ``--config=PATH[:k=v,...]`` in ``argv``, or None.

    Building the config runs the config module's ``get_config`` (unknown, renamed or
    mistyped keys raise ``ValueError`` there); absl would report that wrapped in a
    traceback, so it is built here first, before absl parses the flags.
    """
    text = None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            text = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            text = argv[i + 1]
    if text is None:
        return None
    path, _, arg = text.partition(":")
    if not os.path.isfile(path):
        return f"--config: no config file {path!r}"
    spec = importlib.util.spec_from_file_location("_rsd_jax_config_check", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        module.get_config(arg or None)
    except ValueError as e:
        return f"--config: {e}"
    return None


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=experiments/configs/toy_demo.py")
    if config.job not in JOBS:
        raise app.UsageError(f"unknown job {config.job!r}; known jobs: {sorted(JOBS)}")
    package, needs = JOBS[config.job]
    if needs and not _WORKDIR.value:
        raise app.UsageError(f"the {config.job} job needs --workdir=DIR ({needs})")
    from experiments.common.checks import ConfigError

    try:
        joined = distributed.initialize_from_flags()
    except distributed.DistributedError as e:
        raise SystemExit(f"error: {e}") from None
    if joined and config.job != "speculative":
        raise SystemExit(f"error: the {config.job} job runs as one process")
    if distributed.is_main():
        runtime.announce()
    settings_lib = importlib.import_module(f"experiments.{package}.settings")
    try:
        settings = settings_lib.from_config(config)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    runtime.enable_compile_cache(_COMPILE_CACHE.value)
    job = importlib.import_module(f"experiments.{package}.job")
    if config.job == "toy_demo":
        rows = job.run(settings)
        print(job.format_table(rows, settings.rounds))
        if _WORKDIR.value:
            save_toy_summary(_WORKDIR.value, settings, rows)
        return
    from experiments.common.memory import InsufficientMemoryError
    from experiments.common.records import WorkdirBusyError
    from experiments.data.datasets import DatasetMissingError

    try:
        distributed.exit_on_peer_failure(lambda: job.run(settings, _WORKDIR.value))
    except (ValueError, DatasetMissingError, WorkdirBusyError, InsufficientMemoryError) as e:
        # incompatible or busy workdir, damaged results, missing data, a mesh too large
        raise SystemExit(f"error: {e}") from None


def save_toy_summary(workdir: str, settings, rows: list[dict]) -> str:
    """Writes the toy demo's ``summary.json`` (standard JSON: AR's TV is ``null``)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "summary.json")
    with open(path, "w") as f:
        strict_json.dump({"config": dict(settings.recorded), "rows": rows}, f, indent=2)
    return path


if __name__ == "__main__":
    runtime.quiet_backend_probe()
    problem = config_error(sys.argv[1:])
    if problem:
        sys.exit(f"error: {problem}")
    app.run(main)
