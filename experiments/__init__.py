"""Everything of rsd_jax that does I/O: jobs, configs, data, benchmarks and reports.

- `experiments.run`: the entry point of the jobs (``--config=experiments/configs/NAME.py``);
- `experiments.speculative`, `experiments.distill`, `experiments.toy_demo`: the jobs, each
  with its typed ``settings`` and its ``job``;
- `experiments.data`: the prompt sets (``python -m experiments.data fetch``);
- `experiments.reporting`: statistics, tables, plots;
- `experiments.bench`: measurements (``python -m experiments.bench.decode``, ...);
- `experiments.common`: run plumbing shared by the jobs; `experiments.tools`: developer tools.
"""

from models.moved import install as _install_moved

# Modules of the flat layout (before 2026-12) and where they went; `python -m` with an old
# name fails with this line instead of running nothing.
_install_moved(
    {
        "experiments.datasets": "experiments.data.datasets (CLI: python -m experiments.data)",
        "experiments.sources": "experiments.speculative.sources",
        "experiments.plan": "experiments.speculative.plan",
        "experiments.shape_search": "experiments.speculative.shape_search",
        "experiments.timed": "experiments.speculative.timed",
        "experiments.calibration": "experiments.speculative.calibration",
        "experiments.workdir": "experiments.speculative.workdir (records: experiments.common)",
        "experiments.summary": "experiments.speculative.summary, experiments.reporting.stats",
        "experiments.report": "experiments.reporting.tables, experiments.reporting.plots",
        "experiments.runner": "experiments.speculative.job",
        "experiments.validate": "experiments.<job>.settings.from_config",
        "experiments.distill_data": "experiments.distill.data",
        "experiments.distill_train": "experiments.distill.train",
        "experiments.distill_eval": "experiments.distill.evaluate",
        "experiments.strict_json": "experiments.common.strict_json",
        "experiments.mesh": "experiments.common.mesh",
        "experiments.bench_decode": "python -m experiments.bench.decode",
        "experiments.bench_peer": "python -m experiments.bench.peer",
        "experiments.bench_sharding": "python -m experiments.bench.sharding",
        "experiments.round_timing": "experiments.bench.round_timing",
        "experiments.ot_gap": "python -m experiments.bench.ot_gap",
        "experiments.api_docs": "python -m experiments.tools.api_docs",
    }
)
