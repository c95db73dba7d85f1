"""Fixed draft length: L in {2,3,4,5}, every method, on the real Qwen2.5-Coder pair.

Shapes per L (``width`` W=3 by default, so every tree method scores B = 3L nodes):
SD chain L (B=L); MRS and SpecTr W x L i.i.d. drafts; RSD-C branching W-1-...-1;
RSD-S beam W x L. The shapes used are printed and saved to ``WORKDIR/shapes.md``.

Set-up: ``python -m models.prepare qwen2.5-coder-0.5b qwen2.5-coder-1.5b`` and
``python -m experiments.data fetch``. Launch:

    python -m experiments.run --config=experiments/configs/fixed_length.py --workdir=/tmp/rsd_fixed_length
    python -m experiments.run --config=experiments/configs/fixed_length.py:lengths=2+3,dataset=humaneval --workdir=/tmp/rsd_fl_small
"""  # noqa: E501

from experiments.configs import common


def get_config(arg=None):
    return common.speculative(
        arg, sweep="length", method="sd+mrs+spectr+rsd_c+rsd_s", dataset="humaneval+chat"
    )
