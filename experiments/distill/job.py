"""The ``distill`` job: train a small draft on the target's laws, export it, evaluate it.

    python -m experiments.run --config=experiments/configs/distill.py --workdir=DIR

Stages, each resumable (rerun the same command after an interruption):

1. teacher laws of the training and held-out sequences (`experiments.distill.data`),
   cached outside the workdir and shared by every run with the same target and text;
2. training (`experiments.distill.train`): one jitted optax step per batch, a checkpoint
   every ``checkpoint_every`` steps, held-out KL / top-1 agreement every ``eval_every``;
3. export of the draft to ``DIR/draft`` (HF layout) and the loss curve ``DIR/loss_curve.png``;
4. with ``evaluate``: speculative methods with the trained draft and with ``init_from``,
   AR alongside, in one process (`experiments.distill.evaluate`).

``DIR/summary.json`` gathers the figures: parameter counts, r (the draft's cost per call
relative to the target's, measured), held-out KL and agreement before and after,
training time and throughput, and the evaluation table.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import round_timing
from experiments.common import strict_json
from experiments.common.progress import progress_bar
from experiments.common.records import workdir_lock
from experiments.data import datasets, vocab
from experiments.distill import data as distill_data
from experiments.distill import evaluate as evaluation
from experiments.distill import train as train_lib
from experiments.distill.settings import Settings
from experiments.reporting import plots
from experiments.speculative import sources

CONFIG = "config.json"
SUMMARY = "summary.json"
HISTORY = "history.jsonl"
CHECKPOINTS = "checkpoints"
DRAFT = "draft"
# Keys that may change between a run and its resumption: they do not affect training.
RESUMABLE = {"evaluate", "progress", "plots", "eval_every", "checkpoint_every"}
RESUMABLE |= {k for k in ("eval_methods", "eval_dataset", "eval_prompts",
                          "eval_max_new_tokens", "eval_temperatures")}  # fmt: skip


class IncompatibleWorkdirError(ValueError):
    """The workdir holds a distillation of another config."""


def check_workdir(workdir: Path, settings: Settings) -> None:
    """Refuses a workdir of another distillation; writes config.json for a new one."""
    path = workdir / CONFIG
    mine = dict(settings.recorded)
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = sorted(k for k in set(stored) | set(mine)
                         if k not in RESUMABLE and stored.get(k) != mine.get(k))  # fmt: skip
        if changed:
            raise IncompatibleWorkdirError(
                f"{workdir} holds a distillation with other settings ({', '.join(changed)}); "
                "use another --workdir"
            )
    path.write_text(json.dumps(mine, indent=2, sort_keys=True))


def build_student(settings: Settings, target, base):
    """The untrained student (a LoadedModel) of ``settings.student``."""
    from models import drafts
    from models.arch import head as head_lib

    s = settings.student
    if s.init == "prune":
        model = drafts.prune(base, s.keep_layers)
    else:
        key = jax.random.PRNGKey(settings.seed)
        model = drafts.scratch(target, key, s.layers, s.hidden, s.heads, s.kv_heads, s.mlp_hidden)
    if s.draft_vocab:
        tok = model.tokenizer
        ids = vocab.draft_vocab_ids(tok, model.config.valid_vocab_size, s.draft_vocab)
        model = head_lib.restrict_head(model, ids)
    return model


def _teacher(settings: Settings, target, train, heldout, log) -> tuple[dict, dict, float]:
    from models import adapter, loading

    identity = {
        "target": settings.target,
        "target_config": target.config.to_json(),
        "target_sha256": loading.content_digest(settings.target),
        "tokenizer": target.tokenizer.fingerprint(),
        "seq_len": settings.text.seq_len,
        "top_k": settings.text.top_k,
        "heldout_every": distill_data.HELDOUT_EVERY,
    }
    if settings.text.corpus != "sharegpt":  # caches made before the key existed stay valid
        identity |= {"corpus": settings.text.corpus, "python": platform.python_version()}
    root = datasets.cache_dir().parent / "teacher"
    directory = distill_data.teacher_dir(root, identity)
    (directory / "identity.json").parent.mkdir(parents=True, exist_ok=True)
    (directory / "identity.json").write_text(json.dumps(identity, indent=1, sort_keys=True))
    model = adapter.to_rsd_model(target)
    fn = distill_data.make_teacher_fn(model.apply, settings.text.top_k)

    def compute(ids):
        cache = model.init_cache(ids.shape[0], ids.shape[1])
        return jax.tree.map(np.asarray, fn(model.params, jnp.asarray(ids), cache))

    total = len(train.ids) + len(heldout.ids)
    bar = progress_bar(total * settings.text.seq_len, settings.progress, "tok", "teacher laws")
    start = time.perf_counter()
    computed = [0]

    def progress(n):
        computed[0] += n
        bar.update(n * settings.text.seq_len)

    out = {}
    for name, data in (("heldout", heldout), ("train", train)):
        out[name] = distill_data.teacher_laws(
            directory, name, data, compute, settings.text.teacher_batch, progress
        )
    bar.close()
    seconds = time.perf_counter() - start
    if computed[0]:
        log(f"teacher laws: {computed[0]} sequences in {seconds:.0f} s ({directory})")
    else:
        log(f"teacher laws: all cached ({directory})")
    return out["train"], out["heldout"], seconds if computed[0] else 0.0


def _device_batch(laws: dict, rows, lookup: np.ndarray) -> dict:
    return {
        "ids": jnp.asarray(laws["ids"][rows]),
        "top_logp": jnp.asarray(laws["top_logp"][rows]),
        "cols": jnp.asarray(lookup[laws["top_ids"][rows]]),
    }


def _heldout_stats(evaluate, trainable, frozen, heldout, lookup, batch: int) -> dict:
    sums, n = {}, len(heldout["ids"])
    for start in range(0, n, batch):
        rows = np.arange(start, min(start + batch, n))
        stats = evaluate(trainable, frozen, _device_batch(heldout, rows, lookup))
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(rows)
    return {f"heldout_{k}": v / n for k, v in sums.items()}


def train(
    settings: Settings, model, train_laws, heldout_laws, workdir: Path, log=print, on_step=None
):
    """Trains (or resumes) ``model``; returns (trained model, history, train seconds).

    ``on_step(step)`` is called after each step and its checkpoint (tests interrupt here).
    """
    s, tr = settings.student, settings.training
    frozen_names = ("embed/embedding",) if s.init == "prune" and s.freeze_embedding else ()
    trainable, frozen = train_lib.split_params(model.params, frozen_names)
    hyper = train_lib.Hyper(
        tr.learning_rate, tr.warmup_steps, tr.steps, tr.weight_decay, tr.clip_norm
    )
    optimizer = train_lib.make_optimizer(hyper)
    opt_state = optimizer.init(trainable)
    lookup = train_lib.column_lookup(model.config, model.params)
    step_fn = train_lib.make_train_step(model.config, optimizer)
    evaluate = train_lib.make_eval(model.config)
    ckpt_dir = workdir / CHECKPOINTS
    restored = train_lib.load_checkpoint(ckpt_dir, trainable, opt_state)
    step, history, seconds = 0, [], 0.0
    if restored is not None:
        step, trainable, opt_state, info = restored
        history, seconds = info["history"], info["train_seconds"]
        log(f"resuming training at step {step} of {tr.steps}")
    else:
        stats = _heldout_stats(evaluate, trainable, frozen, heldout_laws, lookup, tr.batch)
        history.append({"step": 0} | stats)
    bar = progress_bar(tr.steps, settings.progress, "step", "training")
    bar.update(step)
    order = distill_data.batches(len(train_laws["ids"]), tr.batch, settings.seed, step)
    tokens_per_step = tr.batch * settings.text.seq_len
    window_start, window_steps = time.perf_counter(), 0
    while step < tr.steps:
        batch = _device_batch(train_laws, next(order), lookup)
        trainable, opt_state, stats = step_fn(trainable, opt_state, frozen, batch)
        step += 1
        window_steps += 1
        stats = {k: float(v) for k, v in stats.items()}
        now = time.perf_counter()
        rate = window_steps * tokens_per_step / max(now - window_start, 1e-9)
        record = {"step": step, "loss": stats["loss"], "agree": stats["agree"],
                  "grad_norm": stats["grad_norm"], "tokens_per_s": rate}  # fmt: skip
        if step % tr.eval_every == 0 or step == tr.steps:
            record |= _heldout_stats(evaluate, trainable, frozen, heldout_laws, lookup, tr.batch)
        history.append(record)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{rate:.0f}")
        bar.update(1)
        if step % tr.checkpoint_every == 0 or step == tr.steps:
            seconds += time.perf_counter() - window_start
            info = {"history": history, "train_seconds": seconds}
            train_lib.save_checkpoint(ckpt_dir, step, trainable, opt_state, info)
            _write_history(workdir, history)
            window_start, window_steps = time.perf_counter(), 0
        if on_step is not None:
            on_step(step)
    bar.close()
    params = train_lib.merge(trainable, frozen)
    return model._replace(params=params), history, seconds


def _write_history(workdir: Path, history: list[dict]) -> None:
    tmp = workdir / (HISTORY + ".tmp")
    with open(tmp, "w") as f:
        for record in history:
            f.write(strict_json.dumps(record) + "\n")
    tmp.replace(workdir / HISTORY)


def measure_r(target, draft, capacity: int = 256) -> dict:
    """Seconds of one one-token forward of each model after ``capacity - 56`` cached
    tokens, timed interleaved, and their ratio r = draft / target."""
    from models import adapter

    t_model, d_model = adapter.to_rsd_model(target), adapter.to_rsd_model(draft)
    prefix = capacity - 56
    best = {"target": [], "draft": []}
    for _ in range(3):  # interleaved: background load falls on both alike
        best["target"].append(round_timing.tree_cost_curve(t_model, prefix, capacity, [1])[1])
        best["draft"].append(round_timing.tree_cost_curve(d_model, prefix, capacity, [1])[1])
    t, d = float(np.median(best["target"])), float(np.median(best["draft"]))
    return {"target_seconds": t, "draft_seconds": d, "r": d / t}


def run(settings: Settings, workdir, log=print) -> dict:
    """Runs (or resumes) the distillation of ``settings`` in ``workdir``; returns the summary."""
    workdir = Path(workdir)
    with workdir_lock(workdir):
        return _run_locked(settings, workdir, log)


def _run_locked(settings: Settings, workdir: Path, log) -> dict:
    from models import loading
    from models.loading import draft_dir

    check_workdir(workdir, settings)
    target = loading.load_model(settings.target, dtype=settings.dtype)
    base = None
    if settings.student.init == "prune" or settings.evaluation.enabled:
        base = loading.load_model(settings.student.init_from, dtype=settings.dtype)
        loading.check_compatible(base, target)
    if target.tokenizer is None:
        raise ValueError(f"{settings.target} has no tokenizer: distillation needs its text")
    text = settings.text
    train_seqs, held_seqs = distill_data.sequences(
        target.tokenizer, text.seq_len, text.train_sequences, text.heldout_sequences, text.corpus
    )
    train_laws, held_laws, teacher_seconds = _teacher(settings, target, train_seqs, held_seqs, log)
    model = build_student(settings, target, base)
    trained, history, train_seconds = train(settings, model, train_laws, held_laws, workdir, log)
    steps = settings.training.steps
    info = {"distilled_from": settings.target, "config": dict(settings.recorded), "steps": steps}
    draft_dir.export(trained, workdir / DRAFT, extra=info)
    exported = loading.load_model(workdir / DRAFT, dtype=settings.dtype)
    loading.check_compatible(exported, target)
    if settings.plots:
        plots.plot_history(history, workdir / "loss_curve.png")
    first = history[0]
    last = next(r for r in reversed(history) if "heldout_kl" in r)
    summary = {
        "draft": str(workdir / DRAFT),
        "draft_params": sources.count_params(trained.params),
        "target_params": sources.count_params(target.params),
        "teacher_seconds": teacher_seconds,
        "train_seconds": train_seconds,
        "train_tokens_per_s": steps
        * settings.training.batch
        * text.seq_len
        / max(train_seconds, 1e-9),
        "heldout_before": {k: v for k, v in first.items() if k.startswith("heldout_")},
        "heldout_after": {k: v for k, v in last.items() if k.startswith("heldout_")},
        "cost": measure_r(target, exported),
    }
    log(format_training(summary))
    if settings.evaluation.enabled:
        summary["evaluation"] = evaluation.run(settings, workdir, target, exported, base, log)
    with open(workdir / SUMMARY, "w") as f:
        strict_json.dump(summary, f, indent=2)
    return summary


def format_training(summary: dict) -> str:
    b, a, c = summary["heldout_before"], summary["heldout_after"], summary["cost"]
    return "\n".join([
        f"draft: {summary['draft_params'] / 1e6:.1f}M params -> {summary['draft']}",
        f"r (one-token forward, draft / target): {c['draft_seconds'] * 1e3:.1f} ms / "
        f"{c['target_seconds'] * 1e3:.1f} ms = {c['r']:.3f}",
        f"held-out KL {b['heldout_kl']:.3f} -> {a['heldout_kl']:.3f} nats/token; top-1 agreement "
        f"{b['heldout_agree']:.3f} -> {a['heldout_agree']:.3f}; overlap bound "
        f"{b['heldout_overlap']:.3f} -> {a['heldout_overlap']:.3f}",
        f"teacher {summary['teacher_seconds']:.0f} s, training {summary['train_seconds']:.0f} s "
        f"({summary['train_tokens_per_s']:.0f} tokens/s)",
    ])  # fmt: skip
