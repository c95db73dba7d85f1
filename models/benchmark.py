"""Forward latency and compile time per preset on this machine, next to llama.cpp's figures.

Not a test. For each preset and layer mode (`--layers`: an unrolled loop over the blocks,
and/or `ModelConfig.scan_layers`): load it (seconds; peak resident memory of the process so
far), prefill a prompt, then compile (trace + lower, then XLA compile, each timed) and time
(a) one-token decode calls and (b) `--nodes`-node draft-tree scoring calls (one forward with
an ancestor mask), each jitted with the cache donated; per-call times are medians over
`--repeats` calls after a warm-up call. Ratios are ours / llama.cpp in tokens per second:
decode against llama.cpp generation speed (docs/results.md), the tree call against its
prompt-evaluation speed (both are "many tokens per call" versus "one token per call").
Timings on a busy machine vary: compare modes within one run, and repeat it.

  python -m models.benchmark smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b
  python -m models.benchmark qwen2.5-coder-0.5b --nodes 16 --layers loop+scan+loop+scan
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from models.arch import decoder
from models.loading import load_model, presets

# llama.cpp on this 2-core CPU (docs/results.md): (generation tok/s, prompt evaluation tok/s).
LLAMA_CPP = {
    "smollm2-135m": (69.0, 188.0),
    "qwen2.5-coder-0.5b": (25.0, 68.0),
    "qwen2.5-coder-1.5b": (14.0, 36.0),
}


def random_tree(num_nodes: int, branching: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A complete `branching`-ary tree in BFS order: (ancestor mask [N, N], depth [N])."""
    parents = [-1 if i < branching else i // branching - 1 for i in range(num_nodes)]
    anc = np.zeros((num_nodes, num_nodes), bool)
    for i in range(num_nodes):
        j = i
        while j >= 0:
            anc[i, j] = True
            j = parents[j]
    return anc, anc.sum(1).astype(np.int32) - 1


def _time(fn, repeats: int) -> float:
    """Median seconds per call of fn() after one warm-up call, blocking on the result."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _compile(fn, *args):
    """(compiled fn, seconds to trace and lower, seconds for XLA to compile)."""
    start = time.perf_counter()
    lowered = fn.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lowered_at - start, time.perf_counter() - lowered_at


def _peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def bench(
    name: str, dtype: str, scan: bool, prefix: int, capacity: int, nodes: int, repeats: int
) -> dict:
    jax.clear_caches()  # compile afresh even if this process ran the mode before
    start = time.perf_counter()
    model = load_model(name, dtype=dtype, scan_layers=scan)
    jax.block_until_ready(model.params)
    load_s, load_peak = time.perf_counter() - start, _peak_rss_gb()
    config, params = model.config, model.params
    fwd = jax.jit(decoder.make_forward(config), donate_argnums=(4,))
    tokens = model.tokenizer.encode("def quicksort(items):\n    " * 40)[:prefix]
    cache = decoder.init_cache(config, 1, capacity)
    prompt = jnp.asarray(tokens, jnp.int32)[None]
    _, cache = decoder.prefill(config, params, prompt, jnp.array([prefix]), cache)

    # (a) one-token decode at position `prefix` (the index is reset so every call is alike).
    state = {"cache": cache}
    one = jnp.array([[tokens[-1]]], jnp.int32)
    pos1 = jnp.array([[prefix]], jnp.int32)
    mask1 = decoder.causal_mask(jnp.array([prefix]), 1, capacity)
    decode_fn, *decode_compile = _compile(fwd, params, one, pos1, mask1, cache)

    def decode():
        c = state["cache"]._replace(index=jnp.array([prefix], jnp.int32))
        logits, state["cache"] = decode_fn(params, one, pos1, mask1, c)
        return logits

    # (b) a `nodes`-node tree after the prefix.
    anc, depth = random_tree(nodes)
    tmask = np.zeros((1, nodes, capacity), bool)
    tmask[0, :, :prefix] = True
    tmask[0, :, prefix : prefix + nodes] = anc
    tmask = jnp.asarray(tmask)
    ttok = jnp.asarray(np.resize(tokens, nodes), jnp.int32)[None]
    tpos = jnp.asarray(prefix + depth)[None]
    tree_fn, *tree_compile = _compile(fwd, params, ttok, tpos, tmask, cache)

    def tree():
        c = state["cache"]._replace(index=jnp.array([prefix], jnp.int32))
        logits, state["cache"] = tree_fn(params, ttok, tpos, tmask, c)
        return logits

    t_decode = _time(decode, repeats)
    t_tree = _time(tree, repeats)
    gen, pp = LLAMA_CPP.get(name, (float("nan"), float("nan")))
    return {
        "preset": name,
        "dtype": dtype,
        "layers": "scan" if scan else "loop",
        "load_s": load_s,
        "load_peak_rss_gb": load_peak,
        "decode_lower_s": decode_compile[0],
        "decode_compile_s": decode_compile[1],
        "tree_lower_s": tree_compile[0],
        "tree_compile_s": tree_compile[1],
        "decode_ms": 1e3 * t_decode,
        "decode_tok_s": 1 / t_decode,
        "decode_ratio": (1 / t_decode) / gen,
        "tree_ms": 1e3 * t_tree,
        "tree_tok_s": nodes / t_tree,
        "tree_ratio": (nodes / t_tree) / pp,
        "tree_over_decode": t_tree / t_decode,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=["smollm2-135m"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--prefix", type=int, default=128)
    parser.add_argument("--capacity", type=int, default=512)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--layers", default="loop+scan", help="'+'-separated modes run in turn: loop, scan"
    )
    args = parser.parse_args(argv)
    modes = args.layers.split("+")
    if not set(modes) <= {"loop", "scan"}:
        parser.error(f"--layers takes loop and scan, got {args.layers!r}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.dtype}, "
          f"prefix {args.prefix}, capacity {args.capacity}, {args.nodes}-node tree")  # fmt: skip
    header = (
        f"{'preset':<20}{'layers':>7}{'decode ms':>10}{'tok/s':>8}{'llama.cpp':>10}{'ratio':>7}"
        f"{'tree ms':>9}{'tok/s':>8}{'llama.cpp pp':>13}{'ratio':>7}{'tree/dec':>9}"
    )
    print(header)
    for name in args.names:
        presets.get_preset(name)
        gen, pp = LLAMA_CPP.get(name, (float("nan"), float("nan")))
        for mode in modes:
            r = bench(
                name, args.dtype, mode == "scan", args.prefix, args.capacity, args.nodes,
                args.repeats,
            )  # fmt: skip
            print(
                f"{name:<20}{mode:>7}{r['decode_ms']:>10.1f}{r['decode_tok_s']:>8.1f}{gen:>10.0f}"
                f"{r['decode_ratio']:>7.2f}{r['tree_ms']:>9.1f}{r['tree_tok_s']:>8.1f}"
                f"{pp:>13.0f}{r['tree_ratio']:>7.2f}{r['tree_over_decode']:>9.2f}",
                flush=True,
            )
            print(
                f"{'':<27}compile s (trace+lower, XLA): decode {r['decode_lower_s']:.1f} + "
                f"{r['decode_compile_s']:.1f}, tree {r['tree_lower_s']:.1f} + "
                f"{r['tree_compile_s']:.1f}; load {r['load_s']:.1f} s, "
                f"peak RSS so far {r['load_peak_rss_gb']:.2f} GB",
                flush=True,
            )


if __name__ == "__main__":
    main()
