"""Mesh specs as users write them (``"DATAxMODEL"``, e.g. ``"1x8"``): parsing and building.

The placement itself (meshes, shardings, the state's layout) is :mod:`rsd_jax.sharding`;
this module only reads the text of a config key or a flag.
"""

from __future__ import annotations

from jax.sharding import Mesh

from rsd_jax import sharding


def parse_mesh(text: str) -> tuple[int, int] | None:
    """``"2x4"`` -> ``(2, 4)`` (data x model); ``""`` -> None (one device).

    Raises:
      ValueError: anything else.
    """
    text = text.strip().lower()
    if not text:
        return None
    parts = text.split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"mesh {text!r} is not of the form DATAxMODEL, e.g. '1x8' or '2x4'")
    return int(parts[0]), int(parts[1])


def mesh_from_string(text: str, devices=None) -> Mesh | None:
    """:func:`rsd_jax.sharding.make_mesh` from ``"DATAxMODEL"``; None for ``""``."""
    sizes = parse_mesh(text)
    return None if sizes is None else sharding.make_mesh(*sizes, devices=devices)
