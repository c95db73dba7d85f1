"""Static draft-tree topologies and the arrays that describe a drafted tree.

Layout (every kind): slot 0 is the root (the last committed token); nodes are
stored in BFS order, level by level, each level a contiguous static slice, and
within a level siblings appear in the order they were drawn. Shapes depend only
on the :class:`TreeSpec`, never on data, so XLA compiles one program per spec.

Kinds (docs/algorithms.md, Draft trees):

* ``chain(L)``: SD, ``L`` nodes.
* ``iid(K, L)``: ``K`` independent draft sequences (MRS / SpecTr), ``K * L``
  nodes; level ``d`` holds the ``d``-th token of every sequence, sequence-major.
  Duplicated prefixes are not merged: the verification walk follows every
  sequence consistent with the accepted prefix.
* ``branching((b_1..b_L))``: RSD-C, level ``l`` has ``prod_{j<=l} b_j`` nodes,
  node ``i`` of level ``l`` is child ``i % b_l`` of node ``i // b_l`` of level
  ``l - 1``.
* ``beam(W, L)``: RSD-S, ``W`` nodes per level whose parents are chosen at run
  time by stochastic beam search (so ``parents`` is data, not static).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

KINDS = ("chain", "iid", "branching", "beam")


@dataclasses.dataclass(frozen=True)
class TreeSpec:
    """Static description of a draft-tree shape.

    Attributes:
      kind: one of ``chain``, ``iid``, ``branching``, ``beam``.
      level_sizes: nodes per level, levels ``1..L``.
      branching: per-level branching factors (``branching``/``chain``), else ().
      num_sequences: ``K`` for ``iid``, ``W`` for ``beam``, 1 for ``chain``.
    """

    kind: str
    level_sizes: tuple[int, ...]
    branching: tuple[int, ...] = ()
    num_sequences: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown tree kind {self.kind!r}; choose one of {KINDS}")
        if self.level_sizes and min(self.level_sizes) < 1:
            raise ValueError(f"every tree level needs >= 1 node, got {self.level_sizes}")
        if not self.level_sizes and self.kind != "chain":
            raise ValueError(f"only a chain may have no levels (AR), got kind {self.kind!r}")

    @property
    def depth(self) -> int:
        """``L``: number of levels = sequential draft calls."""
        return len(self.level_sizes)

    @property
    def num_nodes(self) -> int:
        """Target budget ``B``: drafted nodes, root excluded."""
        return sum(self.level_sizes)

    def level_slice(self, level: int) -> slice:
        """Static slice of slots holding level ``level`` (0 = root)."""
        if level == 0:
            return slice(0, 1)
        start = 1 + sum(self.level_sizes[: level - 1])
        return slice(start, start + self.level_sizes[level - 1])

    @property
    def depths(self) -> np.ndarray:
        """``[N+1]`` depth of each slot (root 0)."""
        return np.repeat(np.arange(self.depth + 1), (1,) + self.level_sizes).astype(np.int32)

    @property
    def is_chain(self) -> bool:
        """A chain spec (SD; AR has no levels): one child per node, so every sibling law
        fits it."""
        return self.kind == "chain"

    @property
    def sibling_law(self) -> str:
        """How siblings are drawn from their parent's draft law.

        ``"iid"`` (independent draws: ``iid`` trees) or ``"without_replacement"`` (an
        ordered sample without replacement, Gumbel-Top-k or SBS: ``branching``, ``beam``
        and ``chain``, whose single child is also an i.i.d. draw, see :attr:`is_chain`).
        A verifier is lossless only on trees drafted with the sibling law it assumes.
        """
        return "iid" if self.kind == "iid" else "without_replacement"

    @property
    def runtime_parents(self) -> bool:
        """Whether parents are chosen at run time (``beam``: SBS picks them, so
        ``parents`` and child counts are data, not static)."""
        return self.kind == "beam"

    @property
    def max_children(self) -> int:
        """Most candidate children the walk can see at one step (static ``K``)."""
        if self.kind in ("beam", "iid"):
            return self.num_sequences
        return max(self.branching, default=1)

    def static_parents(self) -> np.ndarray | None:
        """``[N+1]`` parent slot of each slot (root -1), or None if decided at run time."""
        if self.runtime_parents:
            return None
        parents = [-1]
        for level in range(1, self.depth + 1):
            prev = self.level_slice(level - 1)
            size = self.level_sizes[level - 1]
            if self.kind == "iid":
                if level == 1:
                    parents += [0] * size
                else:
                    parents += [prev.start + k for k in range(size)]
            else:
                b = self.branching[level - 1]
                parents += [prev.start + i // b for i in range(size)]
        return np.asarray(parents, np.int32)

    def describe(self) -> str:
        """Human-readable shape, e.g. ``RSD-C 2-2-2 (B=14, L=3)``."""
        b, n, d = self.num_nodes, self.num_sequences, self.depth
        if self.kind == "chain":
            return f"chain L={d} (B={b})" if d else "AR (no draft)"
        if self.kind == "iid":
            return f"iid {n}x{d} (B={b}, L={d})"
        if self.kind == "branching":
            return f"branching {'-'.join(map(str, self.branching))} (B={b}, L={d})"
        return f"beam W={n} L={d} (B={b})"


def chain(length: int) -> TreeSpec:
    """SD chain of ``length`` draft tokens."""
    _check_positive("length", length)
    return TreeSpec("chain", (1,) * length, branching=(1,) * length)


def autoregressive() -> TreeSpec:
    """The empty tree: only the root, no draft call; verification emits a token from ``q``."""
    return TreeSpec("chain", ())


def iid(num_sequences: int, length: int) -> TreeSpec:
    """``num_sequences`` i.i.d. draft sequences of ``length`` tokens (MRS, SpecTr)."""
    _check_positive("num_sequences", num_sequences)
    _check_positive("length", length)
    return TreeSpec("iid", (num_sequences,) * length, num_sequences=num_sequences)


def branching(factors) -> TreeSpec:
    """RSD-C tree with branching factors ``(b_1..b_L)``."""
    factors = tuple(int(b) for b in factors)
    if not factors or min(factors) < 1:
        raise ValueError(f"branching factors must be positive integers, got {factors}")
    sizes = tuple(math.prod(factors[: i + 1]) for i in range(len(factors)))
    return TreeSpec("branching", sizes, branching=factors, num_sequences=sizes[-1])


def beam(width: int, length: int) -> TreeSpec:
    """RSD-S tree: stochastic beam search of width ``width`` for ``length`` levels."""
    _check_positive("width", width)
    _check_positive("length", length)
    return TreeSpec("beam", (width,) * length, num_sequences=width)


def _check_positive(name, value):
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


class Tree(NamedTuple):
    """A drafted tree, all arrays ``[N+1]`` with slot 0 the root.

    Attributes:
      tokens: drafted ids (root: the last committed token).
      parents: parent slot, -1 for the root.
      valid: whether the slot holds a real node (root always True).
      depth: depth of each slot (static for a spec).
    """

    tokens: Array
    parents: Array
    valid: Array
    depth: Array


def node_positions(depth: Array, root_position: Array) -> Array:
    """Positions of tree slots: ``root_position + depth`` (siblings share a position).

    Args:
      depth: ``[..., N+1]`` slot depths.
      root_position: ``[...]`` position of the root token.
    """
    return jnp.asarray(root_position)[..., None] + depth


def ancestor_mask(parents: Array, depth: int) -> Array:
    """``[N+1, N+1]`` boolean: ``mask[i, j]`` iff ``j`` is ``i`` or an ancestor of ``i``.

    This is the attention pattern of a tree call: each node sees the committed
    prefix (handled by the caller), its ancestors and itself.

    Args:
      parents: ``[N+1]`` parent slots, -1 at the root.
      depth: static maximum depth ``L`` (number of hops to follow).
    """
    n = parents.shape[0]
    mask = jnp.eye(n, dtype=jnp.bool_)
    cur = jnp.arange(n)
    for _ in range(depth):
        cur = jnp.where(cur >= 0, parents[jnp.maximum(cur, 0)], -1)
        mask = mask | ((cur[:, None] == jnp.arange(n)[None, :]) & (cur[:, None] >= 0))
    return mask
