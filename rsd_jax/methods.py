"""Decoding methods as small factories: a tree shape plus the verifiers that fit it.

Adding a method means adding a factory here; nothing in drafting, verification
or the decoding loop changes. Each method checks that its verifiers' sibling
law (i.i.d. or without replacement) matches how its tree is drafted, because a
mismatch silently breaks losslessness.

A method carries its tree verifier (:mod:`rsd_jax.tree_verifiers`): by default
the node walk of :mod:`rsd_jax.walk` with the method's node verifier, or, after
:func:`with_traversal`, sequence-level traversal verification
(:mod:`rsd_jax.traversal`; block verification on a chain). In the compact
syntax a ``/tv`` suffix selects traversal: ``"rsd_s:3x2/tv"``, ``"sd:4/tv"``.
"""

from __future__ import annotations

import dataclasses

from rsd_jax import tree as tree_lib
from rsd_jax import tree_verifiers, verify

_LAW = {"iid": "i.i.d.", "without_replacement": "without-replacement"}
_TRAVERSABLE = ("sd", "rsd_c", "rsd_s")  # names that take /tv: trees of non-i.i.d. siblings


@dataclasses.dataclass(frozen=True)
class Method:
    """A speculative decoding method.

    Attributes:
      name: display name, e.g. ``"RSD-S"``.
      spec: static draft-tree shape.
      verifier: node verification rule: the walk's, and the rule probes
        (:mod:`rsd_jax.probes`) compare a traversal against.
      tree_verifier: how the engine verifies each drafted tree
        (:mod:`rsd_jax.tree_verifiers`); None (the default) means the node
        walk with ``verifier``.
    """

    name: str
    spec: tree_lib.TreeSpec
    verifier: verify.NodeVerifier
    tree_verifier: tree_verifiers.TreeVerifier | None = None

    def __post_init__(self):
        if self.tree_verifier is None:
            object.__setattr__(self, "tree_verifier", tree_verifiers.node_walk(self.verifier))
        for rule in (tree_verifiers.node_walk(self.verifier), self.tree_verifier):
            if not tree_verifiers.fits(rule, self.spec):
                raise ValueError(
                    f"verifier {rule.name!r} assumes {_LAW[rule.sibling_law]} siblings but the "
                    f"tree {self.spec.describe()} draws {_LAW[self.spec.sibling_law]} siblings; "
                    "this would not be lossless"
                )

    @property
    def traversal(self) -> bool:
        """Whether trees are verified by traversal rather than walked node by node."""
        return isinstance(self.tree_verifier, tree_verifiers.Traversal)

    @property
    def budget(self) -> int:
        """Target budget ``B``: draft nodes scored per target call (root excluded)."""
        return self.spec.num_nodes

    @property
    def draft_calls(self) -> int:
        """Sequential draft calls per round (``L``)."""
        return self.spec.depth

    def describe(self) -> str:
        return f"{self.name} [{self.spec.describe()}, verifier={self.tree_verifier.name}]"


def with_traversal(method: Method) -> Method:
    """``method`` verified by traversal (block verification for a chain) instead of node walks."""
    if method.spec.depth == 0:
        raise ValueError("AR drafts nothing: there is no tree to verify by traversal")
    suffix = "BV" if method.spec.is_chain else "TV"
    rule = tree_verifiers.traversal()
    return dataclasses.replace(method, name=f"{method.name}/{suffix}", tree_verifier=rule)


def autoregressive() -> Method:
    """Plain autoregressive sampling from the target: no draft, one token per call."""
    return Method("AR", tree_lib.autoregressive(), verify.get_verifier("sd"))


def sd(length: int) -> Method:
    """Speculative decoding: a chain of ``length`` draft tokens."""
    return Method("SD", tree_lib.chain(length), verify.get_verifier("sd"))


def mrs(num_sequences: int, length: int) -> Method:
    """SpecInfer-style multi-round rejection over ``K`` i.i.d. draft sequences."""
    return Method("MRS", tree_lib.iid(num_sequences, length), verify.get_verifier("mrs"))


def spectr(num_sequences: int, length: int) -> Method:
    """SpecTr: ``K`` i.i.d. draft sequences verified with K-SEQ."""
    return Method("SpecTr", tree_lib.iid(num_sequences, length), verify.get_verifier("kseq"))


def rsd_c(branching) -> Method:
    """RSD with constant branching factors (Gumbel-Top-k per node)."""
    return Method("RSD-C", tree_lib.branching(branching), verify.get_verifier("rrs"))


def rsd_s(width: int, length: int) -> Method:
    """RSD with stochastic beam search of width ``width`` over ``length`` levels."""
    return Method("RSD-S", tree_lib.beam(width, length), verify.get_verifier("rrs"))


FACTORIES = {
    "ar": autoregressive,
    "sd": sd,
    "mrs": mrs,
    "spectr": spectr,
    "rsd_c": rsd_c,
    "rsd_s": rsd_s,
}


def make(name: str, **shape) -> Method:
    """Builds a method by name with its shape keywords.

    Examples: ``make("sd", length=3)``, ``make("spectr", num_sequences=2,
    length=3)``, ``make("rsd_c", branching=(2, 2))``, ``make("rsd_s", width=3,
    length=2)``.

    Raises:
      ValueError: unknown method name or wrong shape keywords.
    """
    if name not in FACTORIES:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(FACTORIES)}")
    try:
        return FACTORIES[name](**shape)
    except TypeError as e:
        raise ValueError(f"bad shape for method {name!r}: {e}") from None


def parse(text: str) -> Method:
    """Parses the compact method syntax used in configs.

    ``ar``, ``sd:L``, ``mrs:KxL``, ``spectr:KxL``, ``rsd_c:b1-b2-...``, ``rsd_s:WxL``;
    e.g. ``"rsd_s:3x2"`` is RSD-S with width 3 and depth 2. A ``/tv`` suffix
    selects traversal verification (``sd``, ``rsd_c``, ``rsd_s`` only).

    Raises:
      ValueError: with the accepted syntax, for anything else.
    """
    syntax = (
        "expected ar, sd:L, mrs:KxL, spectr:KxL, rsd_c:b1-b2-..., rsd_s:WxL, "
        "optionally with /tv (traversal) after sd, rsd_c or rsd_s"
    )
    base, slash, rule = text.strip().partition("/")
    if slash:
        if rule.strip() != "tv" or base.partition(":")[0] not in _TRAVERSABLE:
            raise ValueError(f"bad method {text!r}: {syntax}")
        return with_traversal(parse(base))
    if text.strip() == "ar":
        return autoregressive()
    name, sep, shape = text.strip().partition(":")
    if not sep or name not in FACTORIES:
        raise ValueError(f"bad method {text!r}: {syntax}")
    try:
        if name == "sd":
            return sd(int(shape))
        if name == "rsd_c":
            return rsd_c(tuple(int(b) for b in shape.split("-")))
        k, length = (int(x) for x in shape.split("x"))
    except ValueError as e:
        raise ValueError(f"bad method {text!r}: {syntax} ({e})") from None
    return FACTORIES[name](k, length)


def parse_name(item: str) -> tuple[str, str]:
    """Splits a method name without its shape, as sweeps take them, checked.

    ``"rsd_c/tv"`` gives ``("rsd_c", "/tv")`` and ``"sd"`` gives ``("sd", "")``; the
    method text at shape ``s`` is then ``f"{name}:{s}{suffix}"``, which :func:`parse`
    reads (e.g. ``"rsd_c:2-2/tv"``).

    Raises:
      ValueError: an unknown name, or a suffix :func:`parse` would refuse.
    """
    base, slash, rule = item.strip().partition("/")
    if base not in FACTORIES:
        raise ValueError(f"unknown method {item!r}; choose one of {sorted(FACTORIES)}")
    if slash and (rule != "tv" or base not in _TRAVERSABLE):
        raise ValueError(f"bad method {item!r}: only sd, rsd_c and rsd_s take /tv (traversal)")
    return base, slash + rule
