"""Forward latency per preset on this machine, next to llama.cpp's figures (MODELS.md).

Not a test. For each preset: prefill a prompt, then time (a) one-token decode calls and
(b) 32-node draft-tree scoring calls (one forward with an ancestor mask), each jitted with
the cache donated. Ratios are ours / llama.cpp in tokens per second: decode against
llama.cpp generation speed, the tree call against its prompt-evaluation speed (both are
"many tokens per call" versus "one token per call" regimes).

  python -m models.benchmark smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from models import decoder, presets
from models.loading import load_model

# llama.cpp on this 2-core CPU (MODELS.md): (generation tok/s, prompt evaluation tok/s).
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
    """Median seconds per call of fn() (already compiled), blocking on the result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench(name: str, dtype: str, prefix: int, capacity: int, nodes: int, repeats: int) -> dict:
    model = load_model(name, dtype=dtype)
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

    def decode():
        c = state["cache"]._replace(index=jnp.array([prefix], jnp.int32))
        logits, state["cache"] = fwd(params, one, pos1, mask1, c)
        return logits

    # (b) a `nodes`-node tree after the prefix.
    anc, depth = random_tree(nodes)
    tmask = np.zeros((1, nodes, capacity), bool)
    tmask[0, :, :prefix] = True
    tmask[0, :, prefix : prefix + nodes] = anc
    tmask = jnp.asarray(tmask)
    ttok = jnp.asarray(np.resize(tokens, nodes), jnp.int32)[None]
    tpos = jnp.asarray(prefix + depth)[None]

    def tree():
        c = state["cache"]._replace(index=jnp.array([prefix], jnp.int32))
        logits, state["cache"] = fwd(params, ttok, tpos, tmask, c)
        return logits

    for fn in (decode, tree):
        jax.block_until_ready(fn())  # compile
    t_decode = _time(decode, repeats)
    t_tree = _time(tree, max(3, repeats // 4))
    gen, pp = LLAMA_CPP.get(name, (float("nan"), float("nan")))
    return {
        "preset": name,
        "dtype": dtype,
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
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.dtype}, "
          f"prefix {args.prefix}, capacity {args.capacity}")  # fmt: skip
    header = (
        f"{'preset':<20}{'decode ms':>10}{'tok/s':>8}{'llama.cpp':>10}{'ratio':>7}"
        f"{'tree ms':>9}{'tok/s':>8}{'llama.cpp pp':>13}{'ratio':>7}{'tree/dec':>9}"
    )
    print(header)
    for name in args.names:
        presets.get_preset(name)
        r = bench(name, args.dtype, args.prefix, args.capacity, args.nodes, args.repeats)
        gen, pp = LLAMA_CPP.get(name, (float("nan"), float("nan")))
        print(
            f"{name:<20}{r['decode_ms']:>10.1f}{r['decode_tok_s']:>8.1f}{gen:>10.0f}"
            f"{r['decode_ratio']:>7.2f}{r['tree_ms']:>9.1f}{r['tree_tok_s']:>8.1f}{pp:>13.0f}"
            f"{r['tree_ratio']:>7.2f}{r['tree_over_decode']:>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
