"""The ``distill`` job's settings (``experiments/configs/distill.py``), checked and typed.

:func:`from_config` checks every key (all bad ones in one line,
:class:`experiments.common.checks.ConfigError`) and returns a frozen :class:`Settings`;
the job takes that, never the config. The keys are described in the config's docstring.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

from experiments.common.checks import SEED_MAX, Checks, is_int, plus_items
from experiments.data import datasets
from models.arch.config import DTYPES
from rsd_jax import methods

AT_LEAST_ONE = (
    "layers", "hidden", "heads", "kv_heads", "mlp_hidden", "train_sequences",
    "heldout_sequences", "top_k", "teacher_batch", "steps", "batch", "eval_every",
    "checkpoint_every", "eval_prompts", "eval_max_new_tokens",
)  # fmt: skip
MIN_SEQ_LEN = 8
INITS = ("prune", "scratch")
CORPORA = ("sharegpt", "mix")  # experiments.distill.data.documents


@dataclasses.dataclass(frozen=True)
class Student:
    """The draft before training.

    Attributes:
      init: ``'prune'`` (blocks ``keep_layers`` of ``init_from``) or ``'scratch'`` (a new
        decoder of ``layers`` x ``hidden``, ``heads`` / ``kv_heads``, ``mlp_hidden``).
      init_from: the model pruned, and the draft the evaluation compares with.
      draft_vocab: 0, or N: the head keeps the N most frequent ids (+ specials).
      freeze_embedding: ``prune`` only: the input embedding does not learn.
    """

    init: str
    init_from: str
    keep_layers: tuple[int, ...]
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    mlp_hidden: int
    draft_vocab: int
    freeze_embedding: bool


@dataclasses.dataclass(frozen=True)
class Text:
    """The training text and the teacher's stored laws.

    Attributes:
      corpus: ``'sharegpt'`` or ``'mix'`` (:func:`experiments.distill.data.documents`).
      seq_len, train_sequences, heldout_sequences: sequences of ``seq_len`` tokens.
      top_k, teacher_batch: the stored law per position (top-k ids + the rest of the
        mass) and the teacher's batch size.
    """

    seq_len: int
    train_sequences: int
    heldout_sequences: int
    top_k: int
    teacher_batch: int
    corpus: str = "sharegpt"


@dataclasses.dataclass(frozen=True)
class Training:
    """AdamW with warm-up and cosine decay, global-norm clipping.

    Attributes:
      steps, batch, learning_rate, warmup_steps, weight_decay, clip_norm: the optimiser.
      eval_every, checkpoint_every: held-out evaluation and checkpoint intervals (steps).
    """

    steps: int
    batch: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    clip_norm: float
    eval_every: int
    checkpoint_every: int


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Speculative methods with the trained draft and with ``init_from``, AR alongside.

    Attributes:
      enabled: run it after training.
      methods: method texts.
      datasets: prompt datasets; ``prompts`` of each.
      max_new_tokens: tokens per generation.
      temperatures: every method runs at each.
    """

    enabled: bool
    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    prompts: int
    max_new_tokens: int
    temperatures: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Settings:
    """A checked ``distill`` config.

    Attributes:
      target: the model whose laws the draft learns; ``dtype`` of every model.
      seed: student initialisation, batch order, evaluation prompts and keys.
      student, text, training, evaluation: the sections.
      progress, plots: progress bars; the loss curve.
      recorded: the config's keys and values (``config.json``, the exported draft).
    """

    target: str
    dtype: str
    seed: int
    student: Student
    text: Text
    training: Training
    evaluation: Evaluation
    progress: bool
    plots: bool
    recorded: Mapping[str, Any] = dataclasses.field(compare=False, repr=False)


def from_config(config) -> Settings:
    """Checks every key of a ``distill`` config and returns its :class:`Settings`.

    Raises:
      experiments.common.checks.ConfigError: one line naming each bad key.
    """
    _check(config)
    c = config
    return Settings(
        target=c.target,
        dtype=c.dtype,
        seed=c.seed,
        student=Student(
            c.init, c.init_from, tuple(int(x) for x in plus_items(c.keep_layers)), c.layers,
            c.hidden, c.heads, c.kv_heads, c.mlp_hidden, c.draft_vocab, c.freeze_embedding,
        ),
        text=Text(c.seq_len, c.train_sequences, c.heldout_sequences, c.top_k, c.teacher_batch,
                  c.corpus),
        training=Training(
            c.steps, c.batch, float(c.learning_rate), c.warmup_steps, float(c.weight_decay),
            float(c.clip_norm), c.eval_every, c.checkpoint_every,
        ),
        evaluation=Evaluation(
            c.evaluate, plus_items(c.eval_methods), plus_items(c.eval_dataset), c.eval_prompts,
            c.eval_max_new_tokens, tuple(float(t) for t in plus_items(c.eval_temperatures)),
        ),
        progress=c.progress,
        plots=c.plots,
        recorded=types.MappingProxyType(c.to_dict()),
    )  # fmt: skip


def _check(config) -> None:
    c = Checks(config)
    for key in ("target", "init_from"):
        c.text(key, "a preset name or a model path")
    c.choice("init", INITS)
    c.choice("corpus", CORPORA)
    c.choice("dtype", DTYPES)
    c.ints("keep_layers", minimum=0)
    for key in AT_LEAST_ONE:
        c.int_in(key, 1)
    if not c.errors and config.heads % config.kv_heads:
        c.fail("kv_heads", f"a divisor of heads={config.heads}")
    c.int_in("seq_len", MIN_SEQ_LEN)
    c.int_in("draft_vocab", 0)
    c.int_in("warmup_steps", 0)
    c.int_in("seed", 0, SEED_MAX)
    if is_int(config.batch) and is_int(config.train_sequences):
        if config.batch > config.train_sequences:
            c.fail("batch", f"at most train_sequences={config.train_sequences}")
    c.real_above_zero("learning_rate")
    c.real_at_least_zero("weight_decay")
    c.real_above_zero("clip_norm")
    for key in ("freeze_embedding", "evaluate", "progress", "plots"):
        c.boolean(key)
    names = c.items("eval_dataset")
    if not names or any(n not in datasets.DATASETS for n in names):
        c.fail("eval_dataset", "'+'-separated names among " + ", ".join(datasets.DATASETS))
    for item in c.items("eval_methods"):
        try:
            methods.parse(item)
        except ValueError as e:
            c.errors.append(f"'eval_methods': {e}")
    temps = c.items("eval_temperatures")
    try:
        values = [float(t) for t in temps]
    except ValueError:
        values = [-1.0]
    if not values or any(not (math.isfinite(t) and t >= 0) for t in values):
        c.fail("eval_temperatures", "'+'-separated finite numbers >= 0")
    c.raise_if_any()
