"""Running the decoding engine across devices with JAX's own SPMD machinery.

A 2-D mesh with axes ``("data", "model")``:

- ``"data"`` splits the batch: every ``[B, ...]`` field of the
  :class:`~rsd_jax.decode.DecodeState` and the batch axis of both KV caches
  (:data:`rsd_jax.interface.BATCH_AXIS` of their ``[L, B, S, ...]`` arrays).
- ``"model"`` is tensor parallelism inside the models. ``rsd_jax`` is
  model-agnostic, so the partition of a model's parameters and of the trailing
  axes of its cache comes from the model (``Model.sharding``, a callable
  ``(params, mesh) -> ModelSharding``; ``models.arch.sharding`` has the rules for the
  Flax decoder). A model without rules is replicated over ``"model"``.

Nothing here communicates by hand. The parameters and the state are placed with
:class:`~jax.sharding.NamedSharding`; the step is the unchanged
:meth:`~rsd_jax.decode.Engine.step`, jitted with the state constrained to its
layout on the way in and out (:meth:`Layout.wrap`), and XLA's SPMD partitioner
inserts the collectives (an all-reduce after each row-parallel matmul).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rsd_jax.interface import BATCH_AXIS, map_cache

DATA, MODEL = "data", "model"
# A cache's [L, B, S, ...] arrays: batch on "data", the rest replicated.
DEFAULT_CACHE_SPEC = P(*[None] * BATCH_AXIS, DATA)


class ModelSharding(NamedTuple):
    """How one model lives on a mesh.

    Attributes:
      params: a pytree of PartitionSpecs matching the params (or one spec for all).
      cache: the PartitionSpec of the cache's ``[L, B, S, ...]`` arrays (the ``index``
        field is always split over ``"data"``).
    """

    params: Any
    cache: P


def make_mesh(data: int, model: int, devices=None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default ``jax.devices()``, all hosts).

    Devices are ordered by :func:`jax.experimental.mesh_utils.create_device_mesh`
    where it knows the topology (TPU, GPU), so the model axis, the chattier one,
    gets the closest devices; elsewhere they are taken in ``jax.devices()`` order. Over
    several processes whose count divides ``data``, the data axis spans the processes and
    the model axis stays within one (``create_hybrid_device_mesh``, a process per granule).

    Raises:
      ValueError: a size below 1, or ``data * model`` != the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or model < 1:
        raise ValueError(f"mesh sizes must be >= 1, got data={data}, model={model}")
    if data * model != len(devices):
        raise ValueError(
            f"a {data}x{model} mesh (data x model) needs {data * model} devices, but "
            f"{len(devices)} are available ({devices[0].platform}); on CPU, fake devices "
            f"come from XLA_FLAGS=--xla_force_host_platform_device_count=N set before jax starts"
        )
    hosts = len({d.process_index for d in devices})
    try:
        from jax.experimental import mesh_utils

        if hosts > 1 and data % hosts == 0 and len(devices) // hosts == data // hosts * model:
            grid = mesh_utils.create_hybrid_device_mesh(
                (data // hosts, model), (hosts, 1), devices, process_is_granule=True
            )
        else:
            grid = mesh_utils.create_device_mesh((data, model), devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices, dtype=object).reshape(data, model)
    return Mesh(grid, (DATA, MODEL))


def model_sharding(model, mesh: Mesh) -> ModelSharding:
    """The model's own rules (``model.sharding``), or replicated params and a batch-split cache."""
    rules = getattr(model, "sharding", None)
    if rules is None:
        return ModelSharding(params=P(), cache=DEFAULT_CACHE_SPEC)
    return rules(model.params, mesh)


def param_shardings(model, mesh: Mesh):
    """A pytree of NamedShardings for ``model.params``."""
    specs = model_sharding(model, mesh).params
    if isinstance(specs, P):
        return jax.tree.map(lambda _: NamedSharding(mesh, specs), model.params)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def place_model(model, mesh: Mesh):
    """``model`` (a :class:`rsd_jax.interface.Model`) with its params placed on ``mesh``.

    Place once and reuse: ``jax.device_put`` of an already placed array is free.
    """
    if model is None:
        return None
    return model._replace(params=jax.device_put(model.params, param_shardings(model, mesh)))


def _is_spec(x) -> bool:
    return isinstance(x, P)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a :class:`~rsd_jax.decode.DecodeState` lives on a mesh (hashable: a jit cache key).

    Attributes:
      mesh: the ``("data", "model")`` mesh.
      target_cache: PartitionSpec of the target cache's ``[L, B, S, ...]`` arrays.
      draft_cache: the same for the draft cache.
    """

    mesh: Mesh
    target_cache: P = DEFAULT_CACHE_SPEC
    draft_cache: P = DEFAULT_CACHE_SPEC

    @classmethod
    def for_models(cls, mesh: Mesh, target, draft=None) -> Layout:
        """The layout whose cache specs come from the models' rules."""
        draft_spec = DEFAULT_CACHE_SPEC if draft is None else model_sharding(draft, mesh).cache
        return cls(mesh, model_sharding(target, mesh).cache, draft_spec)

    @property
    def data(self) -> int:
        return self.mesh.shape[DATA]

    def check_batch(self, batch: int) -> None:
        """Raises ValueError unless the batch splits evenly over the data axis."""
        if batch % self.data:
            raise ValueError(
                f"batch {batch} is not divisible by the mesh's data axis ({self.data}); "
                f"pad the batch to a multiple of {self.data} or use a mesh with data=1"
            )

    def _named(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def cache_shardings(self, cache, spec: P):
        """NamedShardings of a cache (following the protocol of :mod:`rsd_jax.interface`).

        ``spec`` is that of the widest arrays; one of lower rank (e.g. per-slot
        positions ``[1, B, S]``) takes its leading entries.
        """
        if cache is None:
            return None
        return map_cache(
            lambda x: self._named(P(*tuple(spec)[: len(x.shape)])),
            cache,
            lambda index: self._named(P(DATA)),
        )

    def state_shardings(self, state):
        """NamedShardings of every leaf of a DecodeState: batch fields on ``"data"``,
        scalars replicated, caches by their specs."""

        def batch_field(x):
            return self._named(P(DATA) if np.ndim(x) > 0 else P())

        plain = {
            k: jax.tree.map(batch_field, v)
            for k, v in state._asdict().items()
            if k not in ("target_cache", "draft_cache")
        }
        return state._replace(
            **plain,
            target_cache=self.cache_shardings(state.target_cache, self.target_cache),
            draft_cache=self.cache_shardings(state.draft_cache, self.draft_cache),
        )

    def place(self, state):
        """``state`` moved to its layout (``jax.device_put``; no copy where already there)."""
        self.check_batch(state.length.shape[0])
        return jax.device_put(state, self.state_shardings(state))

    def constrain(self, state):
        """``jax.lax.with_sharding_constraint`` of ``state`` to its layout (inside jit)."""
        return jax.lax.with_sharding_constraint(state, self.state_shardings(state))

    def wrap(self, step: Callable) -> Callable:
        """``step(state, *args) -> state`` with the state held to its layout in and out."""

        def sharded_step(state, *args):
            return self.constrain(step(self.constrain(state), *args))

        return sharded_step

    def replicated(self, tree):
        """``tree`` copied whole to every device (so every host can read it, e.g. with
        ``np.asarray``, even where the batch spans hosts)."""
        return jax.jit(lambda x: x, out_shardings=self._named(P()))(tree)

    def new_cache(self, init_cache: Callable, batch: int, capacity: int, spec: P):
        """``init_cache(batch, capacity)`` created directly in its sharded layout."""
        self.check_batch(batch)
        make = lambda: init_cache(batch, capacity)  # noqa: E731
        out = self.cache_shardings(jax.eval_shape(make), spec)
        return jax.jit(make, out_shardings=out)()


# ------------------------------------------------------------------ auditing compiled programs

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(
    r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(?P<shape>.+?)\s+"
    r"(?P<kind>" + "|".join(COLLECTIVES) + r")(?P<phase>-start|-done)?\("
)


class Collective(NamedTuple):
    """One collective of a compiled HLO module.

    Attributes:
      kind: ``all-gather``, ``all-reduce``, ``reduce-scatter``, ``all-to-all`` or
        ``collective-permute``.
      shapes: ``(dtype, dims)`` of each result (per device).
      op_name: the JAX op it came from (HLO metadata), ``""`` if absent.
    """

    kind: str
    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    op_name: str

    @property
    def sizes(self) -> tuple[int, ...]:
        """Elements of each result."""
        return tuple(int(np.prod(dims)) for _, dims in self.shapes)


def hlo_collectives(hlo_text: str) -> list[Collective]:
    """The collectives of compiled HLO text (``jitted.lower(...).compile().as_text()``).

    Asynchronous pairs count once (at their ``-done``, which holds the result).
    """
    out = []
    for line in hlo_text.splitlines():
        m = _OP.match(line)
        if m is None or m.group("phase") == "-start":
            continue
        shapes = tuple(
            (dtype, tuple(int(d) for d in dims.split(",") if d))
            for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group("shape"))
        )
        name = re.search(r'op_name="([^"]*)"', line)
        out.append(Collective(m.group("kind"), shapes, name.group(1) if name else ""))
    return out
