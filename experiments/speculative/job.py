"""The ``speculative`` job: real-model generation over prompts x methods, resumable.

Launch through ``experiments/run.py`` with one of ``experiments/configs/{default,
fixed_length,fixed_budget,verifiers}.py``; :func:`run` takes the config's checked
:class:`~experiments.speculative.settings.Settings`. This module orchestrates the job; its
parts live beside it:

- :mod:`~experiments.speculative.plan`: which methods run at which sweep points;
- :mod:`~experiments.speculative.sources`: the models and prompts;
- :mod:`~experiments.speculative.workdir`: the files of ``--workdir`` and the identity
  check of a rerun (records and lock: :mod:`experiments.common.records`);
- :mod:`~experiments.speculative.timed`: timed generation of one prompt with one method
  (warm-up, clocks, per-prompt keys);
- :mod:`~experiments.speculative.calibration`: ``auto_shape``'s acceptance calibration;
- :mod:`~experiments.speculative.race`: ``auto_rate``'s finalists timed on this machine;
- :mod:`~experiments.speculative.summary`, :mod:`experiments.reporting`: the summary,
  table and plots.

Work runs batch by batch (``batch`` prompts of one sampling setting, default 1), all methods
of a batch in turn, so a slow phase of a shared machine lands on every method rather than
on whichever method happened to run then.

Several processes (:mod:`experiments.common.distributed`) run this same function over one
mesh: every process loads the models and decodes every batch (the mesh's data axis splits
each batch's rows over the processes); process 0 alone reads and writes the workdir and
logs, and tells the others which records exist.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments.common import distributed, runtime, strict_json
from experiments.common.progress import progress_bar
from experiments.common.records import (
    DamagedResultsError,
    append_record,
    load_records,
    workdir_lock,
)
from experiments.reporting import plots, tables
from experiments.speculative import plan as plan_lib
from experiments.speculative import race, shape_search, sources
from experiments.speculative import summary as summary_lib
from experiments.speculative.calibration import calibrate, calibration_prompts, cost_curves
from experiments.speculative.settings import Settings
from experiments.speculative.timed import TimedGenerator, bucket_length, prompt_rng_key
from experiments.speculative.workdir import (
    RESULTS,
    SHAPES,
    SUMMARY,
    TABLE,
    IncompatibleWorkdirError,
    check_workdir,
    record_key,
)
from rsd_jax import methods, sharding

AR = "ar"  # the method text of plain decoding, the reference of every speed ratio


def _check_mesh(settings: Settings) -> None:
    """The mesh fits the devices (of every process); checked before any model is loaded."""
    sizes = settings.models.mesh
    if sizes is None and jax.process_count() > 1:
        raise ValueError(
            f"{jax.process_count()} processes need a mesh over all {jax.device_count()} "
            "devices, e.g. mesh=DxM with D processes and M devices each (batch a multiple of D)"
        )
    if sizes is not None and sizes[0] * sizes[1] != jax.device_count():
        raise ValueError(
            f"mesh {sizes[0]}x{sizes[1]} needs {sizes[0] * sizes[1]} devices, "
            f"{jax.device_count()} are available"
        )


def run(
    settings: Settings,
    workdir: str | os.PathLike,
    *,
    model_source: Callable | None = None,
    prompt_source: Callable | None = None,
    on_record: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs (or resumes) the job in ``workdir``; returns the summary (None on processes
    other than 0).

    Args:
      settings: the checked config (:func:`experiments.speculative.settings.from_config`).
      workdir: results directory (created; process 0 only).
      model_source: ``(settings.models) -> sources.Bundle``; default loads the real models.
      prompt_source: ``(settings, bundle) -> [sources.EncodedPrompt]``; default reads
        the datasets.
      on_record: called with each new record after it is written (tests interrupt here).
      log: where messages go (process 0 only).

    Raises:
      ValueError: a mesh that the devices do not fit, before anything is loaded.
      IncompatibleWorkdirError: see :func:`experiments.speculative.workdir.check_workdir`.
      WorkdirBusyError: another run is using ``workdir``
        (:func:`experiments.common.records.workdir_lock`).
    """
    _check_mesh(settings)
    specs = plan_lib.plan(settings)
    workdir = Path(workdir)
    main = distributed.is_main()
    if not main:
        log = _quiet
    lock = workdir_lock(workdir) if main else contextlib.nullcontext()
    with lock:
        return _run_locked(settings, workdir, specs, model_source, prompt_source, on_record, log)


def runtime_record(bundle, layout) -> dict:
    """What ran: the backend, the dtype and weight layouts, and which CPU kernels."""
    from models.kernels import nucleus, tiled_matmul

    used = dict(backend=runtime.backend_line()) | bundle.info.get("layout", {})
    laid_out = {used.get("target_weights"), used.get("draft_weights")} & {"tiled", "int8"}
    used["tiled_kernel"] = bool(laid_out) and tiled_matmul.cpu_kernel()
    used["top_p_kernel"] = layout is None and nucleus.cpu_kernel()
    return used


def _quiet(message: str) -> None:
    del message


def _workdir_state(workdir: Path, settings: Settings, info, log) -> dict:
    """Process 0 checks the workdir (and stores the config once ``info`` is known) and
    reads the keys of its records; every process gets the outcome."""
    state = None
    if distributed.is_main():
        try:
            check_workdir(workdir, settings, info, log)
            state = {"done": sorted(load_records(workdir / RESULTS))}
        except (IncompatibleWorkdirError, DamagedResultsError) as e:
            state = {"error": str(e), "damaged": isinstance(e, DamagedResultsError)}
    state = distributed.broadcast_json(state)
    if "error" in state:
        kind = DamagedResultsError if state["damaged"] else IncompatibleWorkdirError
        raise kind(state["error"])
    return state


def batches(prompts, size: int) -> list[tuple[list, int]]:
    """Prompts in batches of ``size`` that share their sampling, in prompt order; a short
    last batch is filled up with copies of its last prompt, which are decoded (the
    compiled shape stays) but never recorded. Returns ``(batch, real rows)`` pairs."""
    groups: dict[tuple, list] = {}
    for p in prompts:
        groups.setdefault((p.temperature, p.top_p), []).append(p)
    out = []
    for group in groups.values():
        for i in range(0, len(group), size):
            chunk = group[i : i + size]
            out.append((chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)))
    return out


def _run_locked(settings, workdir, specs, model_source, prompt_source, on_record, log) -> dict:
    """The body of :func:`run`, with the workdir locked (by process 0)."""
    main = distributed.is_main()
    _workdir_state(workdir, settings, None, log)  # fail fast, before loading models
    path = workdir / RESULTS
    shapes = plan_lib.describe(specs)
    log("Shapes used (B = draft nodes scored per target call, root excluded):\n" + shapes)
    start = time.perf_counter()
    bundle = (model_source or sources.real_models)(settings.models)
    done = set(_workdir_state(workdir, settings, bundle.info, log)["done"])
    records = load_records(path) if main else {}
    layout = None
    mesh_sizes = settings.models.mesh
    if mesh_sizes is not None:
        mesh = sharding.make_mesh(*mesh_sizes)
        bundle = bundle._replace(
            target=sharding.place_model(bundle.target, mesh),
            draft=sharding.place_model(bundle.draft, mesh),
        )
        layout = sharding.Layout.for_models(mesh, bundle.target, bundle.draft)
        log(
            f"mesh {mesh_sizes[0]}x{mesh_sizes[1]} (data x model) over {mesh.devices.size} "
            f"devices of {jax.process_count()} process(es)"
        )
    if main:
        (workdir / SHAPES).write_text(shapes + "\n")
    log(
        f"models ready in {time.perf_counter() - start:.1f}s: {bundle.info.get('target')} <- "
        f"{bundle.info.get('draft')} (r = {bundle.draft_params / bundle.target_params:.4f})"
    )
    used = runtime_record(bundle, layout)
    log(f"weights and kernels: {used}")
    prompt_source = prompt_source or sources.real_prompts
    prompts = prompt_source(settings, bundle)
    if not prompts:
        raise ValueError("no prompts selected (num_prompts=0?)")
    bucket = bucket_length(prompts)
    if settings.auto.enabled:
        calib_prompts = calibration_prompts(settings, bundle, prompt_source, prompts)
        calib_bucket = max(bucket, bucket_length(calib_prompts))
        table = calibrate(
            settings, bundle, calib_prompts, calib_bucket, workdir, log, layout, prompts
        )
        log("Calibrated acceptance A_d(b) (mean, visited nodes):\n" + shape_search.describe(table))
        costs = raced = None
        if settings.auto.rate:
            costs = cost_curves(settings, bundle, table.width, workdir, log)
            log(f"forward seconds by scored tokens: {costs.to_json()}")
            auto = settings.auto
            finalists = race.finalists(table, costs, max(settings.sweep.budgets), auto.max_depth)
            raced, _ = race.race(
                settings, bundle, calib_prompts, calib_bucket, finalists, workdir, log, layout
            )
        specs = plan_lib.plan(settings, table, costs, raced)
        shapes = plan_lib.describe(specs)
        log("Shapes with auto_shape=true:\n" + shapes)
        if main:
            (workdir / SHAPES).write_text(shapes + "\n")
    texts = list(dict.fromkeys(s.text for s in specs))
    # Batch-major: methods alternate, so load drift on the machine hits all of them alike.
    # A batch with work to do times AR again in this invocation (its records are replaced):
    # ratios vs AR pair records of one invocation only, never rates from two runs.
    invocation = f"{time.time_ns():x}"
    pending = []
    for batch, real in batches(prompts, settings.prompts.batch):
        todo = [t for t in texts if any(record_key(p.key, t) not in done for p in batch[:real])]
        if todo and AR in texts and AR not in todo:
            todo = [t for t in texts if t == AR or t in todo]
        pending += [(batch, real, t) for t in todo]
    total = sum(real for _, real, _ in pending)
    log(
        f"{len(prompts)} prompts x {len(texts)} methods: {total} to run, "
        f"{sum(record_key(p.key, t) in done for p in prompts for t in texts)} already in "
        f"{path}"
    )
    generators: dict[str, TimedGenerator] = {}
    bar = progress_bar(total, settings.report.progress and main)
    try:
        for batch, real, text in pending:
            if text not in generators:  # compile on first use (warm-up, untimed)
                bar.set_description(f"compiling {text}")
                generators[text] = TimedGenerator(
                    bundle,
                    methods.parse(text),
                    bucket,
                    settings.prompts.max_new_tokens,
                    layout,
                    probes=settings.report.probes,
                )
                generators[text].warm_up(batch)
            runner = generators[text]
            bar.set_description(text)
            keys = jnp.stack([prompt_rng_key(settings.seed, p.key) for p in batch])
            outs = distributed.exit_on_peer_failure(lambda r=runner, k=keys, b=batch: r(b, k))
            for p, out in zip(batch[:real], outs, strict=False):
                rec = dict(key=record_key(p.key, text), prompt=p.key, dataset=p.dataset,
                           method=text, name=runner.method.name, temperature=p.temperature,
                           top_p=p.top_p, invocation=invocation) | out  # fmt: skip
                if main:
                    append_record(path, rec)
                    records[rec["key"]] = rec
                done.add(rec["key"])
                if on_record is not None:
                    on_record(rec)
            bar.update(real)
    finally:
        bar.close()
    if not main:
        return None
    nonfinite = sorted(k for k, r in records.items() if r.get("nonfinite_draft_rounds"))
    if nonfinite:
        log(
            f"warning: the draft's logits were no law (a NaN, a +inf or no finite logit) in "
            f"some rounds of {len(nonfinite)}"
            f" records (e.g. {nonfinite[0]}); outputs stay exact but acceptance drops there"
        )
    zero = sorted(k for k, r in records.items() if r.get("zero_prob_draft_rounds"))
    if zero:
        log(
            f"warning: {len(zero)} records (e.g. {zero[0]}) drafted tokens whose recorded draft "
            "probability is 0; the verifiers rejected them, but this is a drafting bug: the law "
            "a token is drawn from and the law recorded for it disagree"
        )
    summary = summary_lib.summarize(settings, specs, prompts, records, bundle)
    summary["runtime"] = used
    summary["wall_seconds_this_invocation"] = time.perf_counter() - start
    (workdir / SUMMARY).write_text(strict_json.dumps(summary, indent=2))
    table = tables.format_table(summary)
    (workdir / TABLE).write_text(table + "\n")
    if settings.report.plots:
        summary["plots"] = plots.plot(summary, workdir)
    log(table)
    return summary
