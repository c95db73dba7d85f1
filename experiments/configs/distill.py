"""Distil a small, cheap draft for the target with optax, then compare it with the 0.5B draft.

Launch (resumable):

    python -m experiments.run --config=experiments/configs/distill.py --workdir=/tmp/distill
    python -m experiments.run --config=experiments/configs/distill.py:steps=50,evaluate=false \
        --workdir=/tmp/distill-smoke

Expected on a 2-core CPU (measured 2026-11-30 from a clean checkout with an empty cache,
GGUF conversion, teacher laws and compilation included): 41 minutes wall (teacher 644 s,
training 1043 s at ~294 tokens/s, evaluation ~9 min), 14.6 GB peak memory. The draft costs
r = 0.063 of a 1.5B call; held-out KL 9.94 -> 1.91 nats/token, top-1 agreement with the
target 0.002 -> 0.418; at T=1 it reaches block efficiency ~1.3 with SD L=4 (0.77x AR),
against ~3.1 (1.02x AR) for the 0.5B draft: cheap enough, not yet accurate enough
(docs/results.md, "Distillation").

On a TPU/GPU scale it up by keys, e.g. ``steps=20000,batch=64,train_sequences=100000,
seq_len=512,keep_layers=0+1+2+3+4+5+23``. The trained draft is exported to
``WORKDIR/draft`` (an HF-layout safetensors directory) and works as ``draft=WORKDIR/draft``
in every other config.

Keys:
  target: the model whose next-token laws the draft learns (preset or local path).
  init: 'prune' (blocks ``keep_layers`` of ``init_from``, with its embedding, final norm
    and head) or 'scratch' (a new decoder of ``layers`` x ``hidden``, ``heads``/
    ``kv_heads`` heads, ``mlp_hidden`` MLP width, the target's vocabulary).
  draft_vocab: N > 0 restricts the draft's head to the N most frequent ids (+ specials);
    0 keeps the full vocabulary.
  freeze_embedding: prune only: keep the input embedding fixed (it is large and already
    trained); the blocks, the final norm and the head learn.
  corpus: 'sharegpt' (later ShareGPT turns) or 'mix' (later ShareGPT conversations in the
    target's chat template alternating with Python standard-library source: text like the
    evaluated prompts); both are disjoint from every evaluated prompt.
  seq_len, train_sequences, heldout_sequences: training text, in sequences of seq_len
    tokens (held-out documents disjoint from the training ones).
  top_k, teacher_batch: the teacher's stored law per position (top-k ids + the rest of the
    mass) and its batch size; laws are cached under ~/.cache/rsd_jax/teacher.
  steps, batch, learning_rate, warmup_steps, weight_decay, clip_norm: AdamW with warm-up
    and cosine decay, global-norm clipping.
  eval_every, checkpoint_every: held-out evaluation and checkpoint intervals (steps).
  evaluate: after training, run the methods of ``eval_methods`` with the trained draft and
    with ``init_from`` (head restricted to ``draft_vocab``) on ``eval_prompts`` HumanEval
    and chat prompts, at every temperature of ``eval_temperatures``, AR timed alongside.
"""

from experiments.configs import common

DISTILL_DEFAULTS = dict(
    job="distill",
    target="qwen2.5-coder-1.5b",
    init="prune",  # prune | scratch
    init_from="qwen2.5-coder-0.5b",
    keep_layers="0+1+2+23",
    layers=4,
    hidden=512,
    heads=8,
    kv_heads=2,
    mlp_hidden=1536,
    draft_vocab=32768,
    freeze_embedding=True,
    dtype="float32",
    corpus="sharegpt",  # sharegpt | mix
    seq_len=128,
    train_sequences=320,
    heldout_sequences=16,
    top_k=64,
    teacher_batch=4,
    steps=300,
    batch=8,
    learning_rate=1e-3,
    warmup_steps=30,
    weight_decay=0.01,
    clip_norm=1.0,
    eval_every=50,
    checkpoint_every=25,
    seed=0,
    evaluate=True,
    eval_methods="ar+sd:4+rsd_c:2-1-1-1+rsd_s:2x4",
    eval_dataset="humaneval+chat",
    eval_prompts=3,
    eval_max_new_tokens=32,
    eval_temperatures="1+0",
    progress=True,
    plots=True,
)


def get_config(arg=None):
    return common.build(DISTILL_DEFAULTS, arg)
