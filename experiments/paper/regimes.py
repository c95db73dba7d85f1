"""The draft regimes of the reproduction: which draft each one runs, and how it is made."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Regime:
    """A draft regime.

    Attributes:
      name: its workdir under the root (and ``<name>_lossless`` for its greedy check).
      label: how the report and the figures name it.
      draft: a preset, or for a distilled draft its path relative to the root.
      distill_config: the distil config that makes the draft first ('' for a preset); its
        workdir is the draft's parent directory.
    """

    name: str
    label: str
    draft: str
    distill_config: str = ""

    @property
    def distill(self) -> bool:
        return bool(self.distill_config)

    def draft_arg(self, root: Path) -> str:
        """The ``draft=`` value of the regime's runs."""
        return str(Path(root) / self.draft) if self.distill else self.draft

    def distill_dir(self, root: Path) -> Path:
        """The distil job's workdir (meaningful only when ``distill``)."""
        return Path(root) / Path(self.draft).parent


REGIMES = {
    "0.5b": Regime("0.5b", "0.5B draft", "qwen2.5-coder-0.5b"),
    "pruned": Regime(
        "pruned",
        "pruned 0.5B draft",
        "pruned_distill/draft",
        "experiments/configs/distill_paper_pruned.py",
    ),
    "distilled": Regime(
        "distilled", "distilled draft", "distill/draft", "experiments/configs/distill_paper.py"
    ),
}
# What ``run`` does unless told otherwise: the 0.5B as it is and the draft in the paper's
# regime, at 8 then 16 prompts. Measured on a 2-core CPU: the 0.5B's stages 2.8 h, the
# pruned draft's 2.9 h plus its training (0.6 h) and, on a machine without cached teacher
# laws, their computation (0.5 h): about 7 h. The distilled draft adds about 4 h.
DEFAULT_REGIMES = ("0.5b", "pruned")
DEFAULT_PROMPTS = "8+16"
