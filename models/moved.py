"""Old module names that moved when the packages were regrouped: importing one (or running
it with ``python -m``) fails with one line naming the new place, not a bare "No module"."""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Mapping


class MovedModules(importlib.abc.MetaPathFinder):
    """A finder that refuses the old names of ``moved`` (old name -> where it went)."""

    def __init__(self, moved: Mapping[str, str]):
        self.moved = dict(moved)

    def find_spec(self, name, path=None, target=None):
        del path, target
        if name in self.moved:
            raise ImportError(f"{name} has moved: use {self.moved[name]}")
        return None


def install(moved: Mapping[str, str]) -> None:
    """Adds a :class:`MovedModules` finder for ``moved`` in front of the import system."""
    sys.meta_path.insert(0, MovedModules(moved))
