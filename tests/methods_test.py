"""rsd_jax.methods: the compact syntax round-trips, bad syntax is refused with the syntax."""

from __future__ import annotations

import pytest

from rsd_jax import methods, verify
from rsd_jax import tree as tree_lib


def _text(m: methods.Method) -> str:
    """The compact text of a method, from its fields only (the inverse of ``parse``)."""
    spec = m.spec
    if spec.depth == 0:
        base = "ar"
    elif m.verifier.name == "sd":
        base = f"sd:{spec.depth}"
    elif spec.kind == "iid":
        name = {"mrs": "mrs", "kseq": "spectr"}[m.verifier.name]
        base = f"{name}:{spec.num_sequences}x{spec.depth}"
    elif spec.kind == "branching":
        base = "rsd_c:" + "-".join(map(str, spec.branching))
    else:
        base = f"rsd_s:{spec.num_sequences}x{spec.depth}"
    return base + ("/tv" if m.traversal else "")


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
    assert _text(m) == text
    assert methods.parse(f"  {text} ") == m  # surrounding blanks are ignored


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
    with pytest.raises(ValueError, match="i.i.d. trees"):
        methods.Method("x", tree_lib.iid(2, 2), verify.get_verifier("mrs"), traversal=True)
    # A chain has one child per node: either kind of rule fits it.
    assert methods.Method("x", tree_lib.chain(2), verify.get_verifier("mrs")).budget == 2
