"""Fixed target budget: B in {6,10,14,21,30} draft nodes per target call, every method.

Shapes per budget (``experiments.speculative.plan.BUDGET_SHAPES``; printed and saved to
``WORKDIR/shapes.md``): SpecTr/MRS K x L = B and RSD-S W x L = B (3x2, 5x2, 7x2, 7x3, 6x5),
RSD-C branching products (2-2, 2-2-1, 2-2-2, 3-2-1-1, 2-2-2-2), SD a chain of
L = min(B, sd_max_length=8) (longer chains only add sequential draft calls; the cap is
marked in the table). Override a shape with ``shape_overrides=21@rsd_c:7-2+30@rsd_s:10x3``; a
shape that does not realise its budget is an error. ``auto_shape=true`` adds, per budget, the
RSD-C shape that acceptance calibrated on extra prompts predicts best.

Set-up: ``python -m models.prepare qwen2.5-coder-0.5b qwen2.5-coder-1.5b`` and
``python -m experiments.data fetch``. Launch:

    python -m experiments.run --config=experiments/configs/fixed_budget.py --workdir=/tmp/rsd_fixed_budget
    python -m experiments.run --config=experiments/configs/fixed_budget.py:budgets=6+14,dataset=humaneval,num_prompts=2,max_new_tokens=16 --workdir=/tmp/rsd_fb_small
"""  # noqa: E501

from experiments.configs import common


def get_config(arg=None):
    return common.speculative(
        arg, sweep="budget", method="sd+mrs+spectr+rsd_c+rsd_s", dataset="humaneval+chat"
    )
