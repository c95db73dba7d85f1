"""Verifiers on the same trees: recursive rejection (node walk) vs traversal verification.

Runs RSD-C 2-2-2 (B=14, L=3), RSD-S 4x3 (B=12, L=3) and SD L=4, each with its node
rule and with traversal (``/tv``; block verification for the SD chain), on the real
Qwen2.5-Coder 0.5B -> 1.5B pair with ``probes=true``: every round also computes, on the
tree actually drafted, the exact expected tokens per target call under both rules
(:mod:`rsd_jax.probes`), so the summary's ``traversal_gain`` is a paired comparison on
identical trees, next to the sampled block efficiency of each method. Probes cost time:
token rates of this config are not for speed comparisons. Run it at T=1 and at T=0.3.

Set-up: ``python -m models.prepare qwen2.5-coder-0.5b qwen2.5-coder-1.5b`` and
``python -m experiments.data fetch``. Launch:

    python -m experiments.run --config=experiments/configs/verifiers.py:temperature=1.0 --workdir=/tmp/rsd_verifiers_t1
    python -m experiments.run --config=experiments/configs/verifiers.py:temperature=0.3 --workdir=/tmp/rsd_verifiers_t03

L=3 trees on the Qwen pair are accepted almost whole (3.4-3.9 of 4 tokens at T=1), which
leaves the verifier little to gain; deeper shapes show the difference (measured: +4.8% tokens
per call for block verification on SD L=8 and for traversal on RSD-C 2-2-1-1-1, 12 prompts):

    python -m experiments.run --config=experiments/configs/verifiers.py:temperature=1.0,num_prompts=12,max_new_tokens=24,method=sd:8+rsd_c:2-2-1-1-1 --workdir=/tmp/rsd_verifiers_deep
"""  # noqa: E501

from experiments.configs import common

METHODS = "sd:4+sd:4/tv+rsd_c:2-2-2+rsd_c:2-2-2/tv+rsd_s:4x3+rsd_s:4x3/tv"


def get_config(arg=None):
    return common.speculative(
        arg,
        method=METHODS,
        dataset="humaneval+chat",
        num_prompts=4,
        sampling="fixed",
        temperature=1.0,
        top_p=1.0,
        probes=True,
    )
