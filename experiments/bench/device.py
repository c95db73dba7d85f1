"""One-command device check: is this machine's JAX as fast as its memory, and exact?

    python -m experiments.bench.device                          # the Qwen2.5-Coder pair
    python -m experiments.bench.device --out=device.json --batches=1+8

On whatever backend JAX runs (CPU, GPU, TPU), with the weights ``auto`` gives there:

1. **read bandwidth**: reading a ``--copy_mb`` MB buffer once (a sum), timed (GB/s);
2. **weight floor**: the bytes of each model's weights (what one decoding call reads) over
   that bandwidth, the time a call cannot beat; each model's one-token step (AR) against it;
3. **tree cost curve**: the target's forward over 1..64 scored tokens against one token;
4. **token rates**: AR and each ``--methods`` at each ``--batches`` size (prompts of
   different lengths), interleaved in one process, as ratios to AR at the same batch;
5. **greedy == AR**: every method's greedy tokens equal AR's;
6. **logits**: a fixed prompt's log-probabilities against a float32 CPU reference (stored
   for the default target in ``experiments/bench/data``; ``--reference`` for others, written
   with ``--write_reference``): top-1 agreement, max |d log p| (from position 1 on).

It prints a table and writes one JSON (``--out``). CI runs it on a tiny pair
(``tests/experiments_device_test.py``) so it never rots; the expected output is in
docs/speed.md ("Device check").
"""

from __future__ import annotations

import json

from absl import app, flags

from experiments.bench.device_check import DATA, check, table
from experiments.common import runtime, strict_json

_TARGET = flags.DEFINE_string("target", "qwen2.5-coder-1.5b", "Target preset or path.")
_DRAFT = flags.DEFINE_string("draft", "qwen2.5-coder-0.5b", "Draft preset or path.")
_METHODS = flags.DEFINE_string("methods", "sd:5+rsd_c:2-1-1-1+rsd_s:2x4", "'+'-separated.")
_BATCHES = flags.DEFINE_string("batches", "1+8", "'+'-separated batch sizes.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "Tokens per prompt.")
_WIDTHS = flags.DEFINE_string("widths", "1+2+4+8+16+32+64", "Tree cost curve: scored tokens.")
_COPY_MB = flags.DEFINE_integer("copy_mb", 1024, "Size of the bandwidth probe (MB).")
_REFERENCE = flags.DEFINE_string(
    "reference", None, "Reference log-probabilities (JSON); default: the stored one of the target."
)
_WRITE_REF = flags.DEFINE_bool("write_reference", False, "Write --reference from this run.")
_DTYPE = flags.DEFINE_string("dtype", "auto", "auto | float32 | bfloat16.")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def main(argv):
    del argv
    runtime.announce()
    from experiments.speculative import sources
    from experiments.speculative.settings import Models

    bundle = sources.real_models(
        Models(_TARGET.value, _DRAFT.value, 0, "auto", "auto", _DTYPE.value, False, None)
    )
    reference = None
    stored = DATA / f"{_TARGET.value}.reference.json"  # a preset's float32 CPU reference
    path = _REFERENCE.value or (str(stored) if stored.is_file() else None)
    if path and not _WRITE_REF.value:
        with open(path) as f:
            reference = json.load(f)
    widths = [int(w) for w in _WIDTHS.value.split("+")]
    batches = [int(b) for b in _BATCHES.value.split("+")]
    methods_ = [m for m in _METHODS.value.split("+") if m]
    result = check(bundle, methods_, batches, _MAX_NEW.value, widths, _COPY_MB.value, reference)
    if _WRITE_REF.value and _REFERENCE.value:
        with open(_REFERENCE.value, "w") as f:
            json.dump(result["logits"]["logp"], f)
    print(table(result))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            strict_json.dump(result, f, indent=1)


if __name__ == "__main__":
    runtime.quiet_backend_probe()
    app.run(main)
