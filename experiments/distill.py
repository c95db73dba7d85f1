"""The ``distill`` job: train a small draft on the target's laws, export it, evaluate it.

    python -m experiments.run --config=experiments/configs/distill.py --workdir=DIR

Stages, each resumable (rerun the same command after an interruption):

1. teacher laws of the training and held-out sequences (`experiments.distill_data`),
   cached outside the workdir and shared by every run with the same target and text;
2. training (`experiments.distill_train`): one jitted optax step per batch, a checkpoint
   every ``checkpoint_every`` steps, held-out KL / top-1 agreement every ``eval_every``;
3. export of the draft to ``DIR/draft`` (HF layout) and the loss curve ``DIR/loss_curve.png``;
4. with ``evaluate``: speculative methods with the trained draft and with ``init_from``,
   AR alongside, in one process (`experiments.distill_eval`).

``DIR/summary.json`` gathers the figures: parameter counts, r (the draft's cost per call
relative to the target's, measured), held-out KL and agreement before and after,
training time and throughput, and the evaluation table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import datasets, distill_data, round_timing, sources, strict_json, validate
from experiments import distill_train as train_lib
from experiments.workdir import WorkdirBusyError, workdir_lock  # noqa: F401 (re-exported)

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


def _progress(total: int, enabled: bool, unit: str, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return None
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)


def check_workdir(workdir: Path, config) -> None:
    """Refuses a workdir of another distillation; writes config.json for a new one."""
    path = workdir / CONFIG
    mine = config.to_dict()
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


def build_student(config, target, base):
    """The untrained student (a LoadedModel) for ``config``."""
    from models import draft_vocab, student

    if config.init == "prune":
        keep = [int(x) for x in config.keep_layers.split("+")]
        model = student.prune(base, keep)
    else:
        key = jax.random.PRNGKey(config.seed)
        model = student.scratch(
            target, key, config.layers, config.hidden, config.heads, config.kv_heads,
            config.mlp_hidden,
        )  # fmt: skip
    if config.draft_vocab:
        tok = model.tokenizer
        ids = sources.draft_vocab_ids(tok, model.config.valid_vocab_size, config.draft_vocab)
        model = draft_vocab.restrict_head(model, ids)
    return model


def _teacher(config, target, train, heldout, log) -> tuple[dict, dict, float]:
    from models import adapter, loading

    identity = {
        "target": config.target,
        "target_config": target.config.to_json(),
        "target_sha256": loading.content_digest(config.target),
        "tokenizer": target.tokenizer.fingerprint(),
        "seq_len": config.seq_len,
        "top_k": config.top_k,
        "heldout_every": distill_data.HELDOUT_EVERY,
    }
    root = datasets.cache_dir().parent / "teacher"
    directory = distill_data.teacher_dir(root, identity)
    (directory / "identity.json").parent.mkdir(parents=True, exist_ok=True)
    (directory / "identity.json").write_text(json.dumps(identity, indent=1, sort_keys=True))
    model = adapter.to_rsd_model(target)
    fn = distill_data.make_teacher_fn(model.apply, config.top_k)

    def compute(ids):
        cache = model.init_cache(ids.shape[0], ids.shape[1])
        return jax.tree.map(np.asarray, fn(model.params, jnp.asarray(ids), cache))

    total = len(train.ids) + len(heldout.ids)
    bar = _progress(total * config.seq_len, config.progress, "tok", "teacher laws")
    start = time.perf_counter()
    computed = [0]

    def progress(n):
        computed[0] += n
        if bar is not None:
            bar.update(n * config.seq_len)

    out = {}
    for name, data in (("heldout", heldout), ("train", train)):
        out[name] = distill_data.teacher_laws(
            directory, name, data, compute, config.teacher_batch, progress
        )
    if bar is not None:
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


def train(config, model, train_laws, heldout_laws, workdir: Path, log=print, on_step=None):
    """Trains (or resumes) ``model``; returns (trained model, history, train seconds).

    ``on_step(step)`` is called after each step and its checkpoint (tests interrupt here).
    """
    frozen_names = (
        ("embed/embedding",) if config.init == "prune" and config.freeze_embedding else ()
    )
    trainable, frozen = train_lib.split_params(model.params, frozen_names)
    hyper = train_lib.Hyper(
        config.learning_rate, config.warmup_steps, config.steps, config.weight_decay,
        config.clip_norm,
    )  # fmt: skip
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
        log(f"resuming training at step {step} of {config.steps}")
    else:
        history.append({"step": 0} | _heldout_stats(
            evaluate, trainable, frozen, heldout_laws, lookup, config.batch))  # fmt: skip
    bar = _progress(config.steps, config.progress, "step", "training")
    if bar is not None:
        bar.update(step)
    order = distill_data.batches(len(train_laws["ids"]), config.batch, config.seed, step)
    tokens_per_step = config.batch * config.seq_len
    window_start, window_steps = time.perf_counter(), 0
    while step < config.steps:
        batch = _device_batch(train_laws, next(order), lookup)
        trainable, opt_state, stats = step_fn(trainable, opt_state, frozen, batch)
        step += 1
        window_steps += 1
        stats = {k: float(v) for k, v in stats.items()}
        now = time.perf_counter()
        rate = window_steps * tokens_per_step / max(now - window_start, 1e-9)
        record = {"step": step, "loss": stats["loss"], "agree": stats["agree"],
                  "grad_norm": stats["grad_norm"], "tokens_per_s": rate}  # fmt: skip
        if step % config.eval_every == 0 or step == config.steps:
            record |= _heldout_stats(
                evaluate, trainable, frozen, heldout_laws, lookup, config.batch
            )
        history.append(record)
        if bar is not None:
            bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{rate:.0f}")
            bar.update(1)
        if step % config.checkpoint_every == 0 or step == config.steps:
            seconds += time.perf_counter() - window_start
            info = {"history": history, "train_seconds": seconds}
            train_lib.save_checkpoint(ckpt_dir, step, trainable, opt_state, info)
            _write_history(workdir, history)
            window_start, window_steps = time.perf_counter(), 0
        if on_step is not None:
            on_step(step)
    if bar is not None:
        bar.close()
    params = train_lib.merge(trainable, frozen)
    return model._replace(params=params), history, seconds


def _write_history(workdir: Path, history: list[dict]) -> None:
    tmp = workdir / (HISTORY + ".tmp")
    with open(tmp, "w") as f:
        for record in history:
            f.write(strict_json.dumps(record) + "\n")
    tmp.replace(workdir / HISTORY)


def plot_history(history: list[dict], path: Path) -> Path | None:
    """Training loss and held-out KL / top-1 agreement against the step, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    held = [(r["step"], r["heldout_kl"], r["heldout_agree"]) for r in history
            if "heldout_kl" in r]  # fmt: skip
    if train:
        ax.plot(*zip(*train, strict=True), label="training KL (batch)", alpha=0.6)
    if held:
        steps, kl, agree = zip(*held, strict=True)
        ax.plot(steps, kl, "o-", label="held-out KL")
        ax2.plot(steps, agree, "o-", color="C2")
    ax.set_xlabel("step")
    ax.set_ylabel("KL(target || draft), nats/token")
    ax.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("held-out top-1 agreement with the target")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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


def run(config, workdir, log=print) -> dict:
    """Runs (or resumes) the distillation of ``config`` in ``workdir``; returns the summary."""
    validate.validate(config)
    workdir = Path(workdir)
    with workdir_lock(workdir):
        return _run_locked(config, workdir, log)


def _run_locked(config, workdir: Path, log) -> dict:
    from models import loading, student

    check_workdir(workdir, config)
    target = loading.load_model(config.target, dtype=config.dtype)
    base = None
    if config.init == "prune" or config.evaluate:
        base = loading.load_model(config.init_from, dtype=config.dtype)
        loading.check_compatible(base, target)
    if target.tokenizer is None:
        raise ValueError(f"{config.target} has no tokenizer: distillation needs its text")
    train_seqs, held_seqs = distill_data.sequences(
        target.tokenizer, config.seq_len, config.train_sequences, config.heldout_sequences
    )
    train_laws, held_laws, teacher_seconds = _teacher(config, target, train_seqs, held_seqs, log)
    model = build_student(config, target, base)
    trained, history, train_seconds = train(config, model, train_laws, held_laws, workdir, log)
    info = {"distilled_from": config.target, "config": config.to_dict(), "steps": config.steps}
    student.export(trained, workdir / DRAFT, extra=info)
    exported = loading.load_model(workdir / DRAFT, dtype=config.dtype)
    loading.check_compatible(exported, target)
    if config.plots:
        plot_history(history, workdir / "loss_curve.png")
    first = history[0]
    last = next(r for r in reversed(history) if "heldout_kl" in r)
    summary = {
        "draft": str(workdir / DRAFT),
        "draft_params": sources.count_params(trained.params),
        "target_params": sources.count_params(target.params),
        "teacher_seconds": teacher_seconds,
        "train_seconds": train_seconds,
        "train_tokens_per_s": config.steps
        * config.batch
        * config.seq_len
        / max(train_seconds, 1e-9),
        "heldout_before": {k: v for k, v in first.items() if k.startswith("heldout_")},
        "heldout_after": {k: v for k, v in last.items() if k.startswith("heldout_")},
        "cost": measure_r(target, exported),
    }
    log(format_training(summary))
    if config.evaluate:
        from experiments import distill_eval

        summary["evaluation"] = distill_eval.run(config, workdir, target, exported, base, log)
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
