"""experiments.common.mesh: the ``DATAxMODEL`` spec of the ``mesh`` config key and of the flags."""

from __future__ import annotations

import pytest

from experiments.common import mesh as mesh_lib
from rsd_jax import sharding


def test_parse_mesh():
    assert mesh_lib.parse_mesh("1x8") == (1, 8)
    assert mesh_lib.parse_mesh(" 2X4 ") == (2, 4)
    assert mesh_lib.parse_mesh("") is None
    for bad in ("8", "1x", "axb", "1x2x3"):
        with pytest.raises(ValueError, match="DATAxMODEL"):
            mesh_lib.parse_mesh(bad)


def test_mesh_from_string():
    assert mesh_lib.mesh_from_string("") is None
    mesh = mesh_lib.mesh_from_string("1x1")
    assert mesh.axis_names == (sharding.DATA, sharding.MODEL) and mesh.devices.shape == (1, 1)
    with pytest.raises(ValueError, match=r"needs 8 devices"):
        mesh_lib.mesh_from_string("2x4")
