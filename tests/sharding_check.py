"""Multi-device check, run in its own process: ``python -m tests.sharding_check``.

JAX fixes the device count when it starts, so this runs apart from the test suite with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set here if jax has not started);
``tests/sharding_test.py`` launches it and asserts on the JSON it prints (last line):

    python -m tests.sharding_check [outputs] [hlo]      # both parts by default

It decodes a batch of 8 prompts with a tiny random target (16 heads, 8 kv heads: split over
the model axis; layers under a scan, params stacked) and draft (4 heads, 2 kv heads:
attention replicated, the fallback; layers unrolled) on one device and on meshes 1x8, 2x4
and 8x1, for RSD-C and RSD-S at three sampling settings, and
records whether outputs, counters, committed caches and placements match. It also compiles
the sharded step and lists its collectives, and does the same for a negative control whose
step forces the sharded weights to be replicated (so weights must be gathered).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "jax" not in sys.modules and "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from experiments.common import mesh as mesh_lib
from models import adapter, testing
from models.arch import decoder
from models.loaded import LoadedModel
from rsd_jax import decode, methods, sharding, transforms  # noqa: E402
from rsd_jax import generation as gen  # noqa: E402

VOCAB, VALID = 272, 265  # 272 splits over 8 (vocabulary-parallel head); ids >= 265 banned
METHODS = ("rsd_c:2-2", "rsd_s:2x2")
MESHES = ("1x8", "2x4", "8x1")
SAMPLINGS = {
    "greedy": transforms.SamplingParams(temperature=0.0),
    "t1": transforms.SamplingParams(temperature=1.0),
    "t1_top_p0.9": transforms.SamplingParams(temperature=1.0, top_p=0.9),
}
BATCH, MAX_NEW = 8, 16
ROW_PARALLEL = ("attn/o/", "mlp/down/")


def models():
    """(target, draft) as rsd_jax Models with the decoder's partition rules; the target
    scans its layers (stacked params), the draft loops over them, so both layouts run."""
    t_cfg = testing.tiny_config(
        "qwen2", vocab_size=VOCAB, valid_vocab_size=VALID, hidden=64, heads=16, kv_heads=8,
        head_dim=8, mlp_hidden=128, scan_layers=True,
    )  # fmt: skip
    d_cfg = testing.tiny_config("llama", vocab_size=VOCAB, valid_vocab_size=VALID, layers=1)
    target = LoadedModel(t_cfg, decoder.init_params(t_cfg, jax.random.PRNGKey(0)), None)
    draft = LoadedModel(d_cfg, decoder.init_params(d_cfg, jax.random.PRNGKey(1)), None)
    return adapter.to_rsd_model(target), adapter.to_rsd_model(draft)


def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(3, VALID, size=int(rng.integers(2, 7))).tolist() for _ in range(BATCH)]


def _first_mismatch(ref, out):
    for row, (a, b) in enumerate(zip(ref, out, strict=True)):
        for pos in range(max(len(a), len(b))):
            x = a[pos] if pos < len(a) else None
            y = b[pos] if pos < len(b) else None
            if x != y:
                return dict(row=row, position=pos, single_device=x, sharded=y)
    return None


def _committed_diff(ref_state, state):
    """Max |difference| of the committed cache slots (slots < length) of both caches."""
    length = np.asarray(ref_state.length)
    worst = 0.0
    for name in ("target_cache", "draft_cache"):
        for field in ("k", "v"):
            a = np.asarray(getattr(getattr(ref_state, name), field))
            b = np.asarray(getattr(getattr(state, name), field))
            for row, n in enumerate(length):
                worst = max(worst, float(np.max(np.abs(a[:, row, :n] - b[:, row, :n]))))
    return worst


def _placement(x, mesh, expected: P) -> dict:
    """Where ``x`` lives vs where the layout says it should."""
    ok = x.sharding.is_equivalent_to(NamedSharding(mesh, expected), x.ndim)
    got = x.sharding.spec if isinstance(x.sharding, NamedSharding) else x.sharding
    return dict(ok=bool(ok), got=str(got), expected=str(expected))


def compare_outputs(target, draft, batch_prompts):
    """Single device vs each mesh, per method and sampling setting (``cases``), and the
    error for a batch the data axis does not divide (``batch_error``)."""
    cases = []
    kw = dict(key=jax.random.PRNGKey(7), max_new_tokens=MAX_NEW, valid_vocab_size=VALID)
    for method in METHODS:
        refs = {
            name: gen.generate(target, draft, batch_prompts, method, sampling=s, **kw)
            for name, s in SAMPLINGS.items()
        }
        for mesh_text in MESHES:
            mesh = mesh_lib.mesh_from_string(mesh_text)
            layout = sharding.Layout.for_models(mesh, target, draft)
            t, d = sharding.place_model(target, mesh), sharding.place_model(draft, mesh)
            drivers = [("while", name) for name in SAMPLINGS]
            if mesh_text == "2x4" and method == METHODS[-1]:
                drivers.append(("python", "t1"))  # the jitted step, round by round
            for driver, name in drivers:
                case = dict(method=method, mesh=mesh_text, sampling=name, driver=driver)
                try:
                    ref = refs[name]
                    out = gen.generate(
                        t, d, batch_prompts, method, sampling=SAMPLINGS[name], mesh=mesh,
                        driver=driver, **kw,
                    )  # fmt: skip
                    st = out.state
                    case.update(
                        equal=out.tokens == ref.tokens,
                        first_mismatch=_first_mismatch(ref.tokens, out.tokens),
                        num_tokens=sum(map(len, out.tokens)),
                        counters_equal=all(
                            np.array_equal(a, b, equal_nan=True)
                            for a, b in zip(
                                jax.tree.leaves(ref.counters),
                                jax.tree.leaves(out.counters),
                                strict=True,
                            )
                        ),
                        committed_cache_max_abs_diff=_committed_diff(ref.state, st),
                        placement=dict(
                            tokens=_placement(st.tokens, mesh, P(sharding.DATA)),
                            key=_placement(st.key, mesh, P(sharding.DATA)),
                            target_k=_placement(st.target_cache.k, mesh, layout.target_cache),
                            draft_k=_placement(st.draft_cache.k, mesh, layout.draft_cache),
                        ),
                    )
                except Exception:  # reported, so the test shows every failing case
                    case["error"] = traceback.format_exc()
                cases.append(case)
    try:
        mesh = mesh_lib.mesh_from_string("8x1")
        gen.generate(target, draft, batch_prompts[:4], METHODS[0], mesh=mesh, **kw)
        batch_error = "no error"
    except ValueError as e:
        batch_error = str(e)
    return dict(cases=cases, batch_error=batch_error)


def _matrices(params):
    """(leaf, stacked) for every weight matrix: rank >= 2 per layer, the blocks' params being
    stacked [L, ...] (so a stacked bias [L, F] is no matrix)."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        stacked = path[0].key == decoder.LAYERS
        if x.ndim - stacked >= 2:
            out.append((x, stacked))
    return out


def _weight_sizes(*param_trees):
    """Element counts of every weight matrix, whole and, for stacked ones, one layer's slice
    (what a gather inside the scanned blocks would move)."""
    sizes = {}
    for tree in param_trees:
        for x, stacked in _matrices(tree):
            sizes[int(np.prod(x.shape))] = "x".join(map(str, x.shape))
            if stacked:
                sizes[int(np.prod(x.shape[1:]))] = "x".join(map(str, x.shape[1:])) + " (a layer)"
    return sizes


def audit(collectives, weight_sizes, cache_sizes):
    """Counts of collectives, row-parallel all-reduces and suspicious all-gathers."""
    counts = {}
    for c in collectives:
        counts[c.kind] = counts.get(c.kind, 0) + 1
    row_parallel = sorted(
        c.op_name.split("Decoder/")[-1]
        for c in collectives
        if c.kind == "all-reduce" and any(p in c.op_name for p in ROW_PARALLEL)
    )
    gathers = [c for c in collectives if c.kind == "all-gather"]
    weight_gathers = [
        dict(shape=list(dims), op_name=c.op_name, weight=weight_sizes[n])
        for c in gathers
        for (dtype, dims), n in zip(c.shapes, c.sizes, strict=True)
        if dtype.startswith(("f", "bf")) and n in weight_sizes
    ]
    cache_gathers = [
        dict(shape=list(dims), op_name=c.op_name)
        for c in gathers
        for (_, dims), n in zip(c.shapes, c.sizes, strict=True)
        if n in cache_sizes
    ]
    return dict(
        counts=counts,
        row_parallel_all_reduces=row_parallel,
        weight_gathers=weight_gathers,
        cache_gathers=cache_gathers,
        all_gather_shapes=sorted({str(list(d)) for c in gathers for _, d in c.shapes}),
    )


def inspect_hlo(target, draft, batch_prompts):
    """Collectives of the compiled sharded step per mesh, plus the negative control."""
    out = {}
    method = methods.parse("rsd_s:2x2")
    padded, lengths = gen.pad_prompts(batch_prompts)
    keys = jax.random.split(jax.random.PRNGKey(0), BATCH)
    sizes = _weight_sizes(target.params, draft.params)
    for mesh_text in (*MESHES, "2x4 negative control"):
        mesh = mesh_lib.mesh_from_string(mesh_text.split()[0])
        t, d = sharding.place_model(target, mesh), sharding.place_model(draft, mesh)
        layout = sharding.Layout.for_models(mesh, t, d)
        engine = decode.Engine(method, t.apply, d.apply, VOCAB, VALID)
        state = gen.init_state(
            engine, t, d, padded, lengths, keys, MAX_NEW, SAMPLINGS["t1"], layout
        )
        cache = state.target_cache.k
        cache_sizes = {cache.size, cache.size // layout.data}
        cache_sizes |= {state.draft_cache.k.size, state.draft_cache.k.size // layout.data}
        if mesh_text.endswith("negative control"):
            replicated = NamedSharding(mesh, P())

            def forced(state, tp, dp, layout=layout, engine=engine, replicated=replicated):
                tp, dp = jax.lax.with_sharding_constraint((tp, dp), replicated)
                return layout.wrap(engine.step)(state, tp, dp)

            step = jax.jit(forced, donate_argnums=(0,))
        else:
            step = gen.jitted_step(engine, layout)
        text = step.lower(state, t.params, d.params).compile().as_text()
        report = audit(sharding.hlo_collectives(text), sizes, cache_sizes)
        report["sharded_weights"] = sum(
            any(axis is not None for axis in x.sharding.spec)
            for tree in (t.params, d.params)
            for x, _ in _matrices(tree)
        )
        out[mesh_text] = report
    return out


def main(parts):
    """Runs the named parts (``outputs``, ``hlo``; default both) and prints one JSON line."""
    start = time.perf_counter()
    result = dict(jax=jax.__version__, devices=jax.device_count(), platform=jax.default_backend())
    if jax.device_count() != 8:
        result["error"] = f"expected 8 devices, got {jax.device_count()}; is XLA_FLAGS set?"
    else:
        target, draft = models()
        batch_prompts = prompts()
        for part, fn in (("outputs", compare_outputs), ("hlo", inspect_hlo)):
            if part in (parts or ("outputs", "hlo")):
                try:
                    result[part] = fn(target, draft, batch_prompts)
                except Exception:
                    result[f"{part}_error"] = traceback.format_exc()
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
