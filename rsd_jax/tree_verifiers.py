"""Tree verifiers: how one drafted tree is verified, as a sampler and its exact law.

A tree verifier has

* ``verify(key, spec, tree, target_probs, draft_probs, eos_id)``: one random
  outcome, a :class:`rsd_jax.walk.WalkResult` (what the engine calls each round);
* ``output_law(spec, tree, target_probs, draft_probs)``: the exact ``[N+1, V]``
  law of that outcome for a fixed tree (what the exactness tests enumerate);
* ``sibling_law``: how the tree's siblings must be drawn for it to be lossless
  (:attr:`rsd_jax.tree.TreeSpec.sibling_law`; :class:`rsd_jax.methods.Method`
  checks that the two agree);
* ``name``: as :meth:`rsd_jax.methods.Method.describe` shows it.

Two kinds, built by factories:

* :func:`node_walk`: the walk of :mod:`rsd_jax.walk` from the root, one node
  verifier of :mod:`rsd_jax.verify` (SD, MRS, K-SEQ, RRS) at every step;
* :func:`traversal`: sequence-level traversal verification of
  :mod:`rsd_jax.traversal` (block verification on a chain).

Adding a verifier means adding a small class with these four members and a
factory; the engine and the exactness tests take it as it is. Verifiers are
frozen dataclasses, so equal methods compare (and hash, as part of the jit
cache key) equal.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol

import jax

from rsd_jax import traversal as traversal_lib
from rsd_jax import tree as tree_lib
from rsd_jax import verify, walk

Array = jax.Array


class TreeVerifier(Protocol):
    """What the engine, the probes and the exactness tests need of a tree verifier."""

    @property
    def name(self) -> str: ...

    @property
    def sibling_law(self) -> str: ...

    def verify(
        self,
        key: Array,
        spec: tree_lib.TreeSpec,
        tree: tree_lib.Tree,
        target_probs: Array,
        draft_probs: Array,
        eos_id=-1,
    ) -> walk.WalkResult:
        """One outcome for one tree (``[N+1]`` arrays; laws ``[N+1, V]``); fresh randomness
        from ``key`` only; an accepted ``eos_id`` ends the round."""
        ...

    def output_law(
        self, spec: tree_lib.TreeSpec, tree: tree_lib.Tree, target_probs: Array, draft_probs: Array
    ) -> Array:
        """``[N+1, V]``: P(last accepted slot ``v``, then token ``y``); sums to one."""
        ...


@dataclasses.dataclass(frozen=True)
class NodeWalk:
    """The walk of :mod:`rsd_jax.walk` with ``node`` deciding at every visited node."""

    node: verify.NodeVerifier

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def sibling_law(self) -> str:
        return self.node.proposal

    def verify(self, key, spec, tree, target_probs, draft_probs, eos_id=-1) -> walk.WalkResult:
        return walk.verify_tree(key, spec, tree, target_probs, draft_probs, self.node, eos_id)

    def output_law(self, spec, tree, target_probs, draft_probs) -> Array:
        return walk.output_law(spec, tree, target_probs, draft_probs, self.node)


@dataclasses.dataclass(frozen=True)
class Traversal:
    """Traversal verification (:mod:`rsd_jax.traversal`): whole paths, leaf first."""

    name: ClassVar[str] = "traversal"
    sibling_law: ClassVar[str] = "without_replacement"

    def verify(self, key, spec, tree, target_probs, draft_probs, eos_id=-1) -> walk.WalkResult:
        return traversal_lib.verify_tree(key, spec, tree, target_probs, draft_probs, eos_id)

    def output_law(self, spec, tree, target_probs, draft_probs) -> Array:
        return traversal_lib.output_law(spec, tree, target_probs, draft_probs)


def node_walk(node: verify.NodeVerifier | str) -> NodeWalk:
    """The node walk with ``node`` (a :class:`rsd_jax.verify.NodeVerifier` or its name)."""
    return NodeWalk(verify.get_verifier(node) if isinstance(node, str) else node)


def traversal() -> Traversal:
    """Traversal verification (block verification on a chain)."""
    return Traversal()


def fits(rule: TreeVerifier, spec: tree_lib.TreeSpec) -> bool:
    """Whether ``rule`` assumes the sibling law ``spec``'s trees are drafted with (a chain
    has one child per node: every rule fits it)."""
    return spec.is_chain or rule.sibling_law == spec.sibling_law
