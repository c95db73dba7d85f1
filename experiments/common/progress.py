"""Progress bars of long runs: tqdm on stderr, or one that shows nothing."""

from __future__ import annotations

import sys


class _Silent:
    """The bar of a run with progress off: the same calls, nothing shown."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, unit: str = "gen", desc: str | None = None):
    """A tqdm bar of ``total`` steps on stderr; a silent one when ``enabled`` is false or
    tqdm is not installed. Either has ``update``, ``set_description``, ``set_postfix`` and
    ``close``."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # progress bars are optional
            enabled = False
    if not enabled:
        return _Silent()
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)
