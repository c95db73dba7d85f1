"""The paper-regime draft for ``python -m experiments.paper``: cheaper than the 0.5B, trained
on eight times the default distillation's text, in a mix like the prompts (chat-templated
conversations and Python code).

Launch (resumable; the paper driver runs it as its ``distill`` stage):

    python -m experiments.run --config=experiments/configs/distill_paper.py --workdir=/work/runs/paper/distill

Aim: ``r <= 0.1`` with one-token acceptance of about 0.5-0.7 at T = 1 (the paper's 115M
draft against a 7B target). Six blocks of the 0.5B (0, 1, 2, 3, 4 and the last) with a
32,768-id head. Not yet run to the end. Measured 2026-12-07 on the 2-core CPU: teacher laws
at ~52 tokens/s, so 2,592 x 128 tokens take ~1 h 45 min; training (1,200 steps of 8 x 128
tokens) is estimated at 1.5-2 hours from the default distillation's ~294 tokens/s with four
blocks. Every chunk of teacher laws and every checkpoint survives an
interruption. The draft is exported to ``WORKDIR/draft`` (``draft=WORKDIR/draft``).
Keys: see ``experiments/configs/distill.py``.
"""  # noqa: E501

from experiments.configs import common
from experiments.configs.distill import DISTILL_DEFAULTS

PAPER_DRAFT = dict(
    corpus="mix",
    keep_layers="0+1+2+3+4+23",
    train_sequences=2560,
    heldout_sequences=32,
    steps=1200,
    warmup_steps=60,
    eval_every=100,
    checkpoint_every=50,
    evaluate=False,
)


def get_config(arg=None):
    return common.build(DISTILL_DEFAULTS | PAPER_DRAFT, arg)
