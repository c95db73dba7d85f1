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
- :mod:`~experiments.speculative.summary`, :mod:`experiments.reporting`: the summary,
  table and plots.

Work runs prompt by prompt, all methods of a prompt in turn, so a slow phase of a shared
machine lands on every method rather than on whichever method happened to run then.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import jax

from experiments.common import strict_json
from experiments.common.progress import progress_bar
from experiments.common.records import append_record, load_records, workdir_lock
from experiments.reporting import plots, tables
from experiments.speculative import plan as plan_lib
from experiments.speculative import shape_search, sources
from experiments.speculative import summary as summary_lib
from experiments.speculative.calibration import calibrate, calibration_prompts
from experiments.speculative.settings import Settings
from experiments.speculative.timed import TimedGenerator, bucket_length, prompt_rng_key
from experiments.speculative.workdir import (
    RESULTS,
    SHAPES,
    SUMMARY,
    TABLE,
    check_workdir,
    record_key,
)
from rsd_jax import methods, sharding

AR = "ar"  # the method text of plain decoding, the reference of every speed ratio


def _check_mesh(settings: Settings) -> None:
    """The mesh fits the devices; checked before any model is loaded."""
    sizes = settings.models.mesh
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
    """Runs (or resumes) the job in ``workdir``; returns the summary.

    Args:
      settings: the checked config (:func:`experiments.speculative.settings.from_config`).
      workdir: results directory (created).
      model_source: ``(settings.models) -> sources.Bundle``; default loads the real models.
      prompt_source: ``(settings, bundle) -> [sources.EncodedPrompt]``; default reads
        the datasets.
      on_record: called with each new record after it is written (tests interrupt here).
      log: where messages go.

    Raises:
      ValueError: a mesh that the devices do not fit, before anything is loaded.
      IncompatibleWorkdirError: see :func:`experiments.speculative.workdir.check_workdir`.
      WorkdirBusyError: another run is using ``workdir``
        (:func:`experiments.common.records.workdir_lock`).
    """
    _check_mesh(settings)
    specs = plan_lib.plan(settings)
    workdir = Path(workdir)
    with workdir_lock(workdir):
        return _run_locked(settings, workdir, specs, model_source, prompt_source, on_record, log)


def _run_locked(settings, workdir, specs, model_source, prompt_source, on_record, log) -> dict:
    """The body of :func:`run`, with the workdir locked."""
    check_workdir(workdir, settings, None)  # fail fast, before loading models
    path = workdir / RESULTS
    records = load_records(path)  # a damaged file fails here, before loading models
    shapes = plan_lib.describe(specs)
    log("Shapes used (B = draft nodes scored per target call, root excluded):\n" + shapes)
    start = time.perf_counter()
    bundle = (model_source or sources.real_models)(settings.models)
    check_workdir(workdir, settings, bundle.info, log)
    layout = None
    mesh_sizes = settings.models.mesh
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
        specs = plan_lib.plan(settings, table)
        shapes = plan_lib.describe(specs)
        log("Shapes with auto_shape=true:\n" + shapes)
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
    generators: dict[str, TimedGenerator] = {}
    bar = progress_bar(total, settings.report.progress)
    try:
        for p, text in pending:
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
                generators[text].warm_up(p)
            runner = generators[text]
            bar.set_description(text)
            out = runner(p, prompt_rng_key(settings.seed, p.key))
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
    summary["wall_seconds_this_invocation"] = time.perf_counter() - start
    (workdir / SUMMARY).write_text(strict_json.dumps(summary, indent=2))
    table = tables.format_table(summary)
    (workdir / TABLE).write_text(table + "\n")
    if settings.report.plots:
        summary["plots"] = plots.plot(summary, workdir)
    log(table)
    return summary
