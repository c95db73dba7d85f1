"""rsd_jax.methods: the compact syntax round-trips, bad syntax is refused with the syntax,
each method carries the tree verifier that fits its tree."""

from __future__ import annotations

import pytest

from rsd_jax import methods, tree_verifiers, verify
from rsd_jax import tree as tree_lib


def _text(m: methods.Method) -> str:
    """The compact text of a method, from its fields only (the inverse of ``parse``)."""
    spec = m.spec
    if spec.depth == 0:
        base = "ar"
    elif m.verifier.name == "sd":
        base = f"sd:{spec.depth}"
    elif spec.sibling_law == "iid":
        name = {"mrs": "mrs", "kseq": "spectr"}[m.verifier.name]
        base = f"{name}:{spec.num_sequences}x{spec.depth}"
    elif spec.runtime_parents:
        base = f"rsd_s:{spec.num_sequences}x{spec.depth}"
    else:
        base = "rsd_c:" + "-".join(map(str, spec.branching))
    return base + ("/tv" if m.tree_verifier == tree_verifiers.traversal() else "")


# (text, name, kind, budget B, draft calls L, verifier)
CASES = [
    ("ar", "AR", "chain", 0, 0, "sd"),
    ("sd:4", "SD", "chain", 4, 4, "sd"),
    ("mrs:2x3", "MRS", "iid", 6, 3, "mrs"),
    ("spectr:3x2", "SpecTr", "iid", 6, 2, "kseq"),
    ("rsd_c:2-2-1", "RSD-C", "branching", 10, 3, "rrs"),  # 2 + 4 + 4
    ("rsd_c:3", "RSD-C", "branching", 3, 1, "rrs"),
    ("rsd_s:3x2", "RSD-S", "beam", 6, 2, "rrs"),
    ("sd:4/tv", "SD/BV", "chain", 4, 4, "sd"),
    ("rsd_c:2-1/tv", "RSD-C/TV", "branching", 4, 2, "rrs"),
    ("rsd_s:2x3/tv", "RSD-S/TV", "beam", 6, 3, "rrs"),
]


@pytest.mark.parametrize("text, name, kind, budget, calls, rule", CASES)
def test_parse_builds_the_method_and_round_trips(text, name, kind, budget, calls, rule):
    m = methods.parse(text)
    assert (m.name, m.spec.kind, m.budget, m.draft_calls) == (name, kind, budget, calls)
    assert m.verifier.name == rule and m.traversal == text.endswith("/tv")
    if text.endswith("/tv"):
        assert m.tree_verifier == tree_verifiers.traversal()
    else:  # walked node by node with its own rule
        assert m.tree_verifier == tree_verifiers.node_walk(rule)
    assert f"verifier={m.tree_verifier.name}]" in m.describe()
    assert _text(m) == text
    assert methods.parse(f"  {text} ") == m  # surrounding blanks are ignored


def test_cases_cover_every_method_with_and_without_traversal():
    covered = {(text.partition(":")[0], text.endswith("/tv")) for text, *_ in CASES}
    every = {(n, False) for n in methods.FACTORIES} | {(n, True) for n in ("sd", "rsd_c", "rsd_s")}
    assert covered == every


def test_parse_equals_the_factories():
    assert methods.parse("rsd_c:2-2") == methods.make("rsd_c", branching=(2, 2))
    assert methods.parse("spectr:2x3") == methods.make("spectr", num_sequences=2, length=3)
    assert methods.parse("rsd_s:3x2/tv") == methods.with_traversal(methods.rsd_s(3, 2))
    assert methods.parse("mrs:2x3") != methods.parse("spectr:2x3")  # same tree, other rule


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sd",
        "sd:",
        "sd:x",
        "sd:1.5",
        "foo:3",
        "SD:3",
        "mrs:2",
        "mrs:2x",
        "spectr:2x3x4",
        "rsd_s:3-2",
        "rsd_c:2--2",
        "rsd_c:",
        "sd:4/bv",
        "sd:4/",
        "mrs:2x3/tv",  # i.i.d. siblings: no traversal
        "ar/tv",
    ],
)
def test_bad_syntax_is_refused_with_the_accepted_syntax(text):
    with pytest.raises(ValueError, match=r"bad method .*expected ar, sd:L, mrs:KxL"):
        methods.parse(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("sd:0", "length must be a positive integer, got 0"),
        ("rsd_s:0x2", "width must be a positive integer, got 0"),
        ("rsd_c:2-0", "branching factors must be positive integers"),
    ],
)
def test_well_formed_but_empty_shapes_name_the_bad_size(text, message):
    with pytest.raises(ValueError, match=message):
        methods.parse(text)


def test_make_rejects_unknown_names_and_keywords():
    with pytest.raises(ValueError, match="unknown method 'rsd'; choose one of"):
        methods.make("rsd", length=2)
    with pytest.raises(ValueError, match="bad shape for method 'sd'"):
        methods.make("sd", width=2)


def test_a_verifier_that_does_not_fit_the_tree_is_refused():
    with pytest.raises(ValueError, match="would not be lossless"):
        methods.Method("x", tree_lib.iid(2, 2), verify.get_verifier("rrs"))
    with pytest.raises(ValueError, match="would not be lossless"):
        methods.Method("x", tree_lib.branching((2, 2)), verify.get_verifier("mrs"))
    traversal = tree_verifiers.traversal()
    with pytest.raises(ValueError, match="'traversal' assumes without-replacement siblings"):
        methods.Method("x", tree_lib.iid(2, 2), verify.get_verifier("mrs"), traversal)
    with pytest.raises(ValueError, match="'mrs' assumes i.i.d. siblings"):  # the tree verifier too
        rule = tree_verifiers.node_walk("mrs")
        methods.Method("x", tree_lib.beam(2, 2), verify.get_verifier("rrs"), rule)
    with pytest.raises(ValueError, match="would not be lossless"):  # and the probes' node rule
        methods.Method("x", tree_lib.branching((2, 2)), verify.get_verifier("kseq"), traversal)
    # A chain has one child per node: every rule fits it.
    assert methods.Method("x", tree_lib.chain(2), verify.get_verifier("mrs")).budget == 2
    assert methods.Method("x", tree_lib.chain(2), verify.get_verifier("rrs"), traversal).traversal


def test_a_method_defaults_to_walking_its_node_rule():
    m = methods.Method("x", tree_lib.branching((2,)), verify.get_verifier("rrs"))
    assert m.tree_verifier == tree_verifiers.node_walk(verify.get_verifier("rrs"))
    assert m == methods.Method("x", m.spec, m.verifier, tree_verifiers.node_walk("rrs"))


@pytest.mark.parametrize(
    "item, want",
    [
        ("ar", ("ar", "")),
        ("sd", ("sd", "")),
        ("rsd_c/tv", ("rsd_c", "/tv")),
        (" rsd_s ", ("rsd_s", "")),
    ],
)
def test_parse_name_splits_bare_names(item, want):
    assert methods.parse_name(item) == want
    name, suffix = want
    if name != "ar":
        shape = {"sd": "3", "rsd_c": "2-2", "rsd_s": "2x2"}[name]
        methods.parse(f"{name}:{shape}{suffix}")  # the documented composition parses


@pytest.mark.parametrize(
    "item, message",
    [
        ("foo", "unknown method 'foo'"),
        ("rsd_s:3x2", "unknown method"),  # a shape is not a name
        ("mrs/tv", "only sd, rsd_c and rsd_s take /tv"),
        ("ar/tv", "only sd, rsd_c and rsd_s take /tv"),
        ("sd/bv", "only sd, rsd_c and rsd_s take /tv"),
    ],
)
def test_parse_name_refuses_what_parse_refuses(item, message):
    with pytest.raises(ValueError, match=message):
        methods.parse_name(item)
