"""Distillation: the loss, the optax optimizer, one jitted train step, and checkpoints.

The student learns the target's next-token law at every position of a sequence. The
target's law is known through its top-k ids (`experiments.distill.data`); the rest of its
mass, and every id the student's head cannot score (a restricted head scores V' ids), is
one more bucket. The loss is KL(target || student) between these coarsened laws:

    sum_i p_i (log p_i - log q_i) + p_rest (log p_rest - log q_rest)

over the teacher's top-k ids i that the student scores, with p_rest = 1 - sum_i p_i and
q_rest = 1 - sum_i q_i. It is zero exactly when the student matches the target on every
bucket, and a lower bound of the full KL (merging outcomes never increases KL).

Parameters split into a trainable and a frozen part (the input embedding of a pruned
student, the ids of a restricted head); only the trainable part has gradients and
optimizer state. Checkpoints are safetensors files of the trainable params and the
optimizer state, named by tree path, plus a JSON manifest (step, history) written last
and atomically: a resumed run restores the same bits and, the data order being a
function of the step, continues to the same result as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.arch import decoder
from models.arch.config import ModelConfig

FROZEN_ALWAYS = (f"{decoder.HEAD}_ids",)


class Hyper(NamedTuple):
    """Optimizer settings: AdamW on a warm-up + cosine schedule, global-norm clipping."""

    learning_rate: float
    warmup_steps: int
    steps: int
    weight_decay: float
    clip_norm: float
    end_lr_fraction: float = 0.1


def make_optimizer(h: Hyper) -> optax.GradientTransformation:
    """``clip_by_global_norm`` then ``adamw`` on ``warmup_cosine_decay_schedule``; weight
    decay on matrices only (not on norm scales or biases)."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=h.learning_rate,
        warmup_steps=h.warmup_steps,
        decay_steps=max(h.steps, h.warmup_steps + 1),
        end_value=h.learning_rate * h.end_lr_fraction,
    )
    decay = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(h.clip_norm),
        optax.adamw(schedule, weight_decay=h.weight_decay, mask=decay),
    )


def split_params(params: dict, frozen_names: tuple[str, ...]) -> tuple[dict, dict]:
    """``(trainable, frozen)`` flat dicts by ``a/b/c`` name (merge with `merge`)."""
    from models.loading.gguf_loader import flatten

    flat = flatten(params)
    frozen = {k: v for k, v in flat.items() if k in frozen_names or k in FROZEN_ALWAYS}
    # Copies: the train step donates the trainable arrays, which may be shared with the
    # model they were pruned from.
    trainable = {k: jnp.array(v, copy=True) for k, v in flat.items() if k not in frozen}
    return trainable, frozen


def merge(trainable: dict, frozen: dict) -> dict:
    from models.loading.gguf_loader import unflatten

    return unflatten(trainable | frozen)


def head_ids(config: ModelConfig, params: dict) -> jax.Array:
    """The id each student logit column scores: ``[V']`` (all ids for a full head)."""
    if config.head_vocab:
        return params[f"{decoder.HEAD}_ids"]
    return jnp.arange(config.vocab_size, dtype=jnp.int32)


def compact_logits(config: ModelConfig, params: dict, ids: jax.Array) -> jax.Array:
    """Student logits ``[b, L, V']`` over its head's columns, causal over ``ids [b, L]``.

    Runs the decoder with a cache of exactly L slots and reads the final norm's output, so
    a restricted head never materialises the full-vocabulary logits (XLA drops them).
    """
    b, seq = ids.shape
    cache = decoder.init_cache(config, b, seq)
    positions = jnp.broadcast_to(jnp.arange(seq)[None], (b, seq))
    mask = decoder.causal_mask(cache.index, seq, seq)
    _, state = decoder.Decoder(config).apply(
        {"params": params}, ids, positions, mask, cache,
        capture_intermediates=lambda module, _: module.name == "final_norm",
        mutable=["intermediates"],
    )  # fmt: skip
    hidden = state["intermediates"]["final_norm"]["__call__"][0]  # [b, L, D]
    if config.head_vocab:
        kernel = params[decoder.HEAD]["kernel"]  # [D, V']
        logits = jnp.einsum("bld,dv->blv", hidden, kernel, preferred_element_type=jnp.float32)
    elif config.tied_embeddings:
        table = params["embed"]["embedding"]  # [V, D]
        logits = jnp.einsum("bld,vd->blv", hidden, table, preferred_element_type=jnp.float32)
    else:
        kernel = params["lm_head"]["kernel"]
        logits = jnp.einsum("bld,dv->blv", hidden, kernel, preferred_element_type=jnp.float32)
    if not config.head_vocab and config.valid_vocab_size < config.vocab_size:
        valid = jnp.arange(config.vocab_size) < config.valid_vocab_size
        logits = jnp.where(valid, logits, decoder.MASK_VALUE)
    return logits


def column_lookup(config: ModelConfig, params: dict) -> np.ndarray:
    """``[V]`` int32: the student column of each id, -1 for ids its head cannot score."""
    ids = np.asarray(head_ids(config, params))
    out = np.full(config.vocab_size, -1, np.int32)
    out[ids] = np.arange(len(ids), dtype=np.int32)
    return out


def coarse_kl(logits, top_logp, cols):
    """Per-position KL(target || student) over buckets, and the statistics reported.

    Args:
      logits: ``[b, L, V']`` student logits.
      top_logp: ``[b, L, k]`` target log-probabilities of its top-k ids.
      cols: ``[b, L, k]`` student columns of those ids (-1: not scored by the student).

    Returns:
      ``(kl [b, L], agree [b, L], overlap [b, L])``: the KL; whether the student's most
      likely id is the target's (the top-1 id must be scored); and sum of min(p, q) over
      the buckets (an upper bound of the acceptance rate of one sampled draft token).
    """
    lq = jax.nn.log_softmax(logits, axis=-1)
    scored = cols >= 0
    lq_top = jnp.take_along_axis(lq, jnp.maximum(cols, 0), axis=-1)  # [b, L, k]
    p = jnp.where(scored, jnp.exp(top_logp), 0.0)
    q = jnp.where(scored, jnp.exp(lq_top), 0.0)
    p_rest = jnp.clip(1.0 - p.sum(-1), 0.0, 1.0)
    q_rest = jnp.clip(1.0 - q.sum(-1), 1e-9, 1.0)
    terms = jnp.where(scored, p * (top_logp - lq_top), 0.0).sum(-1)
    rest = jnp.where(
        p_rest > 0, p_rest * (jnp.log(jnp.maximum(p_rest, 1e-30)) - jnp.log(q_rest)), 0
    )
    agree = scored[..., 0] & (jnp.argmax(logits, -1) == cols[..., 0])
    overlap = jnp.minimum(p, q).sum(-1) + jnp.minimum(p_rest, q_rest)
    return terms + rest, agree, overlap


def make_loss(config: ModelConfig):
    """``loss(trainable, frozen, batch) -> (mean KL, stats)``; batch has ``ids [b, L]``,
    ``top_logp`` and ``cols`` ``[b, L, k]``."""

    def loss(trainable, frozen, batch):
        params = merge(trainable, jax.lax.stop_gradient(frozen))
        logits = compact_logits(config, params, batch["ids"])
        kl, agree, overlap = coarse_kl(logits, batch["top_logp"], batch["cols"])
        return kl.mean(), {"agree": agree.mean(), "overlap": overlap.mean()}

    return loss


def make_train_step(config: ModelConfig, optimizer: optax.GradientTransformation):
    """Jitted ``(trainable, opt_state, frozen, batch) -> (trainable, opt_state, stats)``;
    ``trainable`` and ``opt_state`` are donated."""
    loss = make_loss(config)

    def step(trainable, opt_state, frozen, batch):
        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(trainable, frozen, batch)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        stats = stats | {"loss": value, "grad_norm": norm}
        return trainable, opt_state, stats

    return jax.jit(step, donate_argnums=(0, 1))


def make_eval(config: ModelConfig):
    """Jitted ``(trainable, frozen, batch) -> stats`` (mean KL, agreement, overlap)."""
    loss = make_loss(config)

    def evaluate(trainable, frozen, batch):
        value, stats = loss(trainable, frozen, batch)
        return stats | {"kl": value}

    return jax.jit(evaluate)


# ----------------------------------------------------------------------------- checkpoints

MANIFEST = "checkpoint.json"


def _flat_state(tree: Any) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def save_checkpoint(directory: Path, step: int, trainable, opt_state, info: dict) -> Path:
    """Writes ``ckpt-<step>.safetensors`` then the manifest pointing at it (atomically);
    older checkpoint files are removed afterwards."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"params{k}": v for k, v in _flat_state(trainable).items()}
    tensors |= {f"opt{k}": v for k, v in _flat_state(opt_state).items()}
    name = f"ckpt-{step:08d}.safetensors"
    tmp = directory / (name + ".tmp")
    save_file({k: np.array(v, order="C") for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, directory / name)
    manifest = directory / MANIFEST
    tmp_manifest = directory / (MANIFEST + ".tmp")
    tmp_manifest.write_text(json.dumps(info | {"step": step, "file": name}, indent=1))
    os.replace(tmp_manifest, manifest)
    for old in directory.glob("ckpt-*.safetensors"):
        if old.name != name:
            old.unlink()
    return directory / name


def load_checkpoint(directory: Path, trainable_template, opt_template):
    """``(step, trainable, opt_state, info)`` of the latest checkpoint, or None if none.

    The templates give the tree structure; every leaf must be present with its shape and
    dtype, else ValueError (a checkpoint of another student or optimizer).
    """
    from safetensors.numpy import load_file

    manifest = directory / MANIFEST
    if not manifest.is_file():
        return None
    info = json.loads(manifest.read_text())
    tensors = load_file(str(directory / info["file"]))

    def restore(prefix, template):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
        expected = {prefix + jax.tree_util.keystr(path) for path, _ in leaves}
        stored = {k for k in tensors if k.startswith(prefix + "[")}
        if stored - expected:
            raise ValueError(f"checkpoint {info['file']} holds {sorted(stored - expected)[:3]}, "
                             "which this student lacks: another student?")  # fmt: skip
        out = []
        for path, leaf in leaves:
            key = prefix + jax.tree_util.keystr(path)
            if key not in tensors:
                raise ValueError(f"checkpoint {info['file']} lacks {key}: another student?")
            value = tensors[key]
            if value.shape != np.shape(leaf) or value.dtype != np.asarray(leaf).dtype:
                raise ValueError(f"checkpoint {key} is {value.shape} {value.dtype}, "
                                 f"expected {np.shape(leaf)} {np.asarray(leaf).dtype}")  # fmt: skip
            out.append(jnp.asarray(value))
        return jax.tree_util.tree_unflatten(treedef, out)

    trainable = restore("params", trainable_template)
    opt_state = restore("opt", opt_template)
    return int(info["step"]), trainable, opt_state, info
