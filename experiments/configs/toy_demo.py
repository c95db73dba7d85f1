"""Toy demo: every method on n-gram draft/target models with known conditionals.

No weights needed; runs in about a minute on 2 CPU cores. Launch:

    python -m experiments.run --config=experiments/configs/toy_demo.py
    python -m experiments.run --config=experiments/configs/toy_demo.py:vocab=8,rounds=50000

Keys: ``vocab`` (ids), ``order`` (n-gram order), ``alpha`` (Dirichlet
concentration of the tables; small = peaked), ``agreement`` (how much of the
target's table the draft shares, in [0, 1]), ``rounds`` (independent rounds per
method), ``draft_cost`` (``r`` for MBSU), ``seed``, ``methods`` (``+``-separated,
syntax of ``rsd_jax.methods.parse``, ``/tv`` included; AR is always the first row).
A value out of range (e.g. ``agreement`` outside [0, 1], ``vocab < 3``, ``alpha <= 0``)
fails before anything runs; the ranges are in ``experiments/common/checks.py``.
"""

from experiments.configs import common


def get_config(arg=None):
    return common.build(
        dict(
            job="toy_demo",
            vocab=6,
            order=3,
            alpha=0.5,
            agreement=0.7,
            rounds=20_000,
            draft_cost=0.1,
            seed=0,
            methods="sd:3+mrs:2x3+spectr:2x3+rsd_c:2-1-1+rsd_s:2x3",
        ),
        arg,
    )
