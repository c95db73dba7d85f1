"""Writes docs/api.md, the API reference, from the code's signatures and docstrings.

    python -m experiments.tools.api_docs           # regenerate docs/api.md
    python -m experiments.tools.api_docs --check   # exit 1 if docs/api.md differs from the code

``tests/docs_test.py`` fails when the file is stale, so a changed signature or docstring
only needs this one command. What is documented: every public function and class defined
in the modules of ``MODULES`` (names without a leading underscore, in source order), with
the public methods a class defines itself; for a package, the names it re-exports.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pathlib
import re
import sys
from collections.abc import Sequence

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "docs" / "api.md"

# The library surface: the model-agnostic core, then the networks and their loaders.
# Entry points (models.prepare, models.benchmark, experiments.*) are documented by --help;
# the text API (experiments.text) is the one Python surface of experiments/.
MODULES = (
    "rsd_jax",
    "rsd_jax.interface",
    "rsd_jax.transforms",
    "rsd_jax.gumbel",
    "rsd_jax.sbs",
    "rsd_jax.tree",
    "rsd_jax.drafting",
    "rsd_jax.verify",
    "rsd_jax.walk",
    "rsd_jax.traversal",
    "rsd_jax.tree_verifiers",
    "rsd_jax.probes",
    "rsd_jax.ot_bound",
    "rsd_jax.methods",
    "rsd_jax.metrics",
    "rsd_jax.kv_cache",
    "rsd_jax.decode",
    "rsd_jax.prompts",
    "rsd_jax.generation",
    "rsd_jax.sharding",
    "models",
    "models.arch.config",
    "models.arch.decoder",
    "models.arch.head",
    "models.arch.quantize",
    "models.arch.sharding",
    "models.loaded",
    "models.loading",
    "models.loading.tokenizer",
    "models.loading.presets",
    "models.loading.hf_loader",
    "models.loading.families",
    "models.loading.draft_dir",
    "models.kernels.tiled_matmul",
    "models.kernels.nucleus",
    "models.kernels.native",
    "models.drafts",
    "models.adapter",
    "models.errors",
    "models.toy",
    "experiments.text",
    "experiments.text.generator",
    "experiments.text.results",
)

HEADER = """\
# API reference

Generated from the code by `python -m experiments.tools.api_docs`; do not edit by hand
(`tests/docs_test.py` fails when this file is stale). Every function in `rsd_jax` is pure,
works under `jax.jit` and `jax.vmap`, takes explicit PRNG keys and acts on the last axis
unless its docstring says otherwise. The mathematics is in [algorithms.md](algorithms.md),
the models in [models.md](models.md).
"""

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _is_flax_module(cls) -> bool:
    return any(b.__name__ == "Module" and b.__module__.startswith("flax") for b in cls.__mro__)


def _signature(obj) -> str:
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return "(" + ", ".join(b.__name__ for b in obj.__bases__) + ")"
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    if inspect.isclass(obj):
        params = list(sig.parameters.values())
        if _is_flax_module(obj):  # every linen Module takes these two; they say nothing
            params = [p for p in params if p.name not in ("parent", "name")]
        sig = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)
    return _format(sig)


def _annotation(a) -> str:
    if isinstance(a, str):
        return a
    if hasattr(a, "__forward_arg__"):  # typing.ForwardRef, as NamedTuple fields keep them
        return a.__forward_arg__
    return inspect.formatannotation(a)


def _format(sig: inspect.Signature) -> str:
    """Like ``str(sig)``, with string annotations unquoted and no object addresses."""
    parts, star_done, slash_pending = [], False, False
    for p in sig.parameters.values():
        if p.kind is p.POSITIONAL_ONLY:
            slash_pending = True
        elif slash_pending:
            parts.append("/")
            slash_pending = False
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, star_done = "*" + p.name, True
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + p.name
        if p.annotation is not p.empty:
            text += ": " + _annotation(p.annotation)
        if p.default is not p.empty:
            text += (" = " if p.annotation is not p.empty else "=") + repr(p.default)
        parts.append(text)
    if slash_pending:
        parts.append("/")
    ret = ""
    if sig.return_annotation is not sig.empty:
        ret = " -> " + _annotation(sig.return_annotation)
    out = "(" + ", ".join(parts) + ")" + ret
    if len(out) > 80:  # one parameter a line, as the code is formatted
        out = "(\n" + "".join(f"    {p},\n" for p in parts) + ")" + ret
    return _ADDRESS.sub("", out)  # default values that are objects print their address


def _method_signature(raw) -> str:
    """A method's signature as called: without ``self`` or ``cls``."""
    fn = _unwrap(raw)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "(...)"
    params = list(sig.parameters.values())
    if not isinstance(raw, staticmethod) and params:
        params = params[1:]
    return _format(sig.replace(parameters=params))


def _line(obj) -> int:
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return 0


def _doc(obj) -> str:
    doc = inspect.getdoc(obj)
    if inspect.isclass(obj) and doc and doc.startswith(obj.__name__ + "("):
        doc = None  # the signature that dataclasses write when a class has no docstring
    return _ADDRESS.sub("", doc) if doc else "(no docstring)"


def _is_public_member(name: str, obj, module: str) -> bool:
    if name.startswith("_"):
        return False
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return False
    return getattr(obj, "__module__", None) == module


def _methods(cls) -> list[tuple[str, object]]:
    out = []
    for name, raw in vars(cls).items():
        if name.startswith("_"):
            continue
        fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
        if isinstance(raw, property):
            fn = raw.fget
        if inspect.isfunction(fn) and fn.__qualname__.startswith(cls.__qualname__ + "."):
            out.append((name, raw))
    return sorted(out, key=lambda item: _line(_unwrap(item[1])))


def _unwrap(raw):
    if isinstance(raw, (staticmethod, classmethod)):
        return raw.__func__
    if isinstance(raw, property):
        return raw.fget
    return raw


def _block(text: str) -> list[str]:
    return ["```text", *text.splitlines(), "```", ""]


def _render_member(prefix: str, name: str, obj) -> list[str]:
    kind = "class" if inspect.isclass(obj) else "def"
    lines = [f"### `{prefix}{name}`", "", "```python", f"{kind} {name}{_signature(obj)}", "```"]
    lines += ["", *_block(_doc(obj))]
    if inspect.isclass(obj):
        for mname, raw in _methods(obj):
            fn = _unwrap(raw)
            if isinstance(raw, property):
                lines += [f"#### `{name}.{mname}` (property)", ""]
            else:
                deco = {staticmethod: "@staticmethod\n", classmethod: "@classmethod\n"}
                head = deco.get(type(raw), "") + f"def {mname}{_method_signature(raw)}"
                lines += [f"#### `{name}.{mname}`", "", "```python", *head.splitlines(), "```", ""]
            doc = inspect.getdoc(fn)
            lines += _block(doc) if doc else ["(no docstring)", ""]
    return lines


def _defining_module(package, name: str) -> str:
    """The submodule of ``package`` that holds the same object (for constants)."""
    obj = getattr(package, name)
    for mod_name in MODULES:
        if mod_name.startswith(package.__name__ + "."):
            if getattr(importlib.import_module(mod_name), name, None) is obj:
                return mod_name
    return package.__name__


def render_module(module_name: str) -> list[str]:
    mod = importlib.import_module(module_name)
    lines = [f"## `{module_name}`", "", *_block(_doc(mod))]
    if hasattr(mod, "__path__"):  # a package: list what it re-exports, documented below
        homes: dict[str, list[str]] = {}
        for name in sorted(getattr(mod, "__all__", [])):
            obj = getattr(mod, name)
            home = getattr(obj, "__module__", None) if callable(obj) else None
            homes.setdefault(home or _defining_module(mod, name), []).append(f"`{name}`")
        if homes:
            lines += ["Re-exported names, by the module that defines them:", ""]
            lines += [f"- `{home}`: " + ", ".join(names) for home, names in sorted(homes.items())]
            lines.append("")
        return lines
    members = [(n, o) for n, o in vars(mod).items() if _is_public_member(n, o, module_name)]
    members.sort(key=lambda item: _line(item[1]))
    for name, obj in members:
        lines += _render_member(f"{module_name}.", name, obj)
    return lines


def render() -> str:
    lines = [HEADER, "Modules: " + ", ".join(f"`{m}`" for m in MODULES) + ".", ""]
    for name in MODULES:
        lines += render_module(name)
    text = "\n".join(lines)
    return text.rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.tools.api_docs",
        description="Write docs/api.md from the code's signatures and docstrings.",
    )
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 if docs/api.md is stale"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run python -m experiments.tools.api_docs", file=sys.stderr)
            return 1
        print(f"{OUTPUT} is up to date")
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
