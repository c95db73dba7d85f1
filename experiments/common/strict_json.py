"""Standard JSON only: non-finite floats become ``null`` before writing.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default, which strict
parsers (browsers, ``jq``, most other languages) reject. Every JSON file the experiments
write (``results.jsonl``, ``summary.json``, ``config.json``, ``calibration.json``, the
demo's and the tools' outputs) goes through :func:`dumps` or :func:`dump`: a non-finite
float is written as ``null`` explicitly, and ``allow_nan=False`` makes any other path
to a non-standard token an error instead of a silently unreadable file.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """A copy of ``obj`` with every non-finite float (also in dicts, lists, tuples) as None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kw) -> str:
    """``json.dumps`` of :func:`finite` ``(obj)`` with ``allow_nan=False``."""
    return json.dumps(finite(obj), allow_nan=False, **kw)


def dump(obj: Any, fp, **kw) -> None:
    """``json.dump`` of :func:`finite` ``(obj)`` with ``allow_nan=False``."""
    json.dump(finite(obj), fp, allow_nan=False, **kw)
