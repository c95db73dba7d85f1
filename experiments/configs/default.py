"""Default experiment: every method of the paper on the real Qwen2.5-Coder pair, tuned for speed.

Draft Qwen2.5-Coder-0.5B-Instruct -> target Qwen2.5-Coder-1.5B-Instruct (presets), 6 prompts
(3 HumanEval, 3 ShareGPT chat; ``num_prompts`` is the total, spread round-robin over
``dataset``), 96 new tokens, the paper's sampling for code and chat (``sampling=paper``:
T=1.0, top-p 0.95), and AR, SD (L=5), MRS and SpecTr (2x3), RSD-C (2-1-1-1) and RSD-S
(W=2, L=4). Weights (``auto``, models/arch/quantize.py): on a CPU with the kernels
(x86-64, AVX-512, g++) the target's float32 in tiles (``tiled``: the same model to float
rounding; scoring a tree of up to 6 tokens costs little more than one token) and the
draft's as int8 (a call costs r ~ 0.15-0.2 of a target call instead of 0.32-0.37; a
coarser draft law, which every method still verifies exactly); on an accelerator float
weights in bfloat16. The run records which (``summary.json``: ``models.layout``). The
draft keeps its full vocabulary (``draft_vocab=0``).
Other tasks of the paper: ``dataset=humaneval+chat+summarise+translate+shakespeare``.

Set-up once (models, then data):

    python -m models.prepare qwen2.5-coder-0.5b qwen2.5-coder-1.5b
    python -m experiments.data fetch

Launch (about 12 minutes on 2 cores, models and data fetched, compilation included):

    python -m experiments.run --config=experiments/configs/default.py --workdir=/tmp/rsd_default
    python -m experiments.run --config=experiments/configs/default.py:num_prompts=2,max_new_tokens=16 --workdir=/tmp/rsd_ci

Greedy (T=0: every method must reproduce AR's output exactly):

    python -m experiments.run --config=experiments/configs/default.py:sampling=fixed,temperature=0 --workdir=/tmp/rsd_greedy

Like for like with the float weights (e.g. to compare):
``default.py:target_weights=float,draft_weights=float,dtype=float32``; ``tiled`` and ``int8``
need float32 and one device.

Keys: see ``common.SPECULATIVE_SECTIONS`` (``method``; ``target``, ``draft``, ``draft_vocab``,
``target_weights``, ``draft_weights``; ``dataset``, ``num_prompts`` (total), ``max_new_tokens``; ``sampling`` (``paper`` or
``fixed`` with ``temperature``, ``top_p``), ``seed``; ...). Rerunning the same command resumes.
"""  # noqa: E501

from experiments.configs import common

DEFAULTS = dict(
    method="ar+sd:5+mrs:2x3+spectr:2x3+rsd_c:2-1-1-1+rsd_s:2x4",
    dataset="humaneval+chat",
    num_prompts=6,
    max_new_tokens=96,
    draft_vocab=0,
)


def get_config(arg=None):
    return common.speculative(arg, **DEFAULTS)
