"""Default experiment: every method at one comparable setting on the real Qwen2.5-Coder pair.

Draft Qwen2.5-Coder-0.5B-Instruct -> target Qwen2.5-Coder-1.5B-Instruct (presets), one
prompt of each dataset by default (HumanEval, ShareGPT chat / summarise / translate,
Shakespeare; ``num_prompts`` is the total, spread round-robin over ``dataset`` in order),
32 new tokens,
the paper's per-dataset sampling (T=0.3 summarise/translate, else T=1.0 top-p 0.95), and
AR, SD, MRS, SpecTr, RSD-C and RSD-S at draft length L=2 with target budget B=6 for every
tree (SD: B=2), the setting of the paper's first XSum rows (ALGORITHMS.md section 7).

Set-up once (models, then data):

    python -m models.prepare qwen2.5-coder-0.5b qwen2.5-coder-1.5b
    python -m experiments.datasets fetch

Launch:

    python -m experiments.run --config=experiments/configs/default.py --workdir=/tmp/rsd_default
    python -m experiments.run --config=experiments/configs/default.py:num_prompts=2,max_new_tokens=16 --workdir=/tmp/rsd_ci

Greedy (T=0: every method must reproduce AR's output exactly):

    python -m experiments.run --config=experiments/configs/default.py:temperature=0 --workdir=/tmp/rsd_greedy

Keys: see ``common.SPECULATIVE_DEFAULTS`` (``method``, ``temperature``, ``top_p``,
``num_prompts`` (total), ``max_new_tokens``, ``seed``, ``dataset``, ``target``,
``draft``, ...). Rerunning the same command resumes.
"""  # noqa: E501

from experiments.configs import common


def get_config(arg=None):
    return common.speculative(arg)
