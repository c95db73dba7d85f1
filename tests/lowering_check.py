"""Lowering for accelerators, run in its own process: ``python -m tests.lowering_check``.

Exports (``jax.export``, platforms ``tpu`` and ``cuda``, from this CPU machine) every
method's engine step (``/tv`` included), the prefill, the distillation's train step and the
step sharded on a 2x4 mesh, in float32 and bfloat16, on tiny llama, qwen2 and gemma3
decoders (and the tiled/int8 weight layouts with the top-p kernel in float32), and lists the
custom calls each module holds. The project's CPU kernels (XLA FFI targets registered for
the CPU only) must appear in none: on an accelerator they would fail to compile. A negative
control shows the check finds one: the tiled step exported for the CPU, and a kernel wrapper
that skips ``jax.lax.platform_dependent`` exported for the TPU.

8 fake CPU devices are set before JAX starts; ``tests/lowering_test.py`` runs this and
asserts on the JSON of the last line.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "jax" not in sys.modules and "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from experiments.distill import train as train_lib  # noqa: E402
from models import adapter, testing  # noqa: E402
from models.arch import decoder, quantize  # noqa: E402
from models.kernels import nucleus, tiled_matmul  # noqa: E402
from models.loaded import LoadedModel  # noqa: E402
from rsd_jax import decode, kv_cache, methods, sharding, transforms  # noqa: E402
from rsd_jax import generation as gen  # noqa: E402

ACCELERATORS = ("tpu", "cuda")
METHODS = ("ar", "sd:3", "mrs:2x2", "spectr:2x2", "rsd_c:2-1", "rsd_s:2x2", "sd:3/tv",
           "rsd_c:2-1/tv", "rsd_s:2x2/tv")  # fmt: skip
ARCHS = ("llama", "qwen2", "gemma3_text")
DTYPES = ("float32", "bfloat16")
GEMMA = dict(
    norm="rms_plus_one", post_norms=True, qk_norm=True, mlp="geglu_tanh", embed_scale=True,
    attn_scale=8**-0.5, attn_softcap=5.0, final_softcap=8.0, rope_local_theta=100.0,
    sliding_window=3, layer_types=("sliding_attention", "full_attention"),
)  # fmt: skip
_CALL = re.compile(r"custom_call[^@\n]*@([\w.]+)|call_target_name\s*=\s*\"([\w.]+)\"")


def cpu_kernels() -> set[str]:
    """The FFI targets of the project's CPU kernels."""
    return set(tiled_matmul._TARGETS.values()) | {nucleus._TARGET}


def custom_calls(module_text: str) -> set[str]:
    return {a or b for a, b in _CALL.findall(module_text)}


def loaded(arch: str, dtype: str, seed: int) -> LoadedModel:
    kw = dict(dtype=dtype, rope_layout="rotate_half")
    if arch == "gemma3_text":
        kw |= dict(tied_embeddings=True, head_dim=8) | GEMMA
    cfg = testing.tiny_config(arch, **kw)
    return LoadedModel(cfg, decoder.init_params(cfg, jax.random.PRNGKey(seed), noise=0.3), None)


def _state_shapes(engine, target, draft, layout=None, batch=2):
    prompts = np.tile(np.arange(3, 9, dtype=np.int32), (batch, 1))
    lengths = np.full((batch,), 6, np.int32)
    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    sampling = transforms.SamplingParams(temperature=1.0, top_p=0.9)
    return jax.eval_shape(
        lambda: gen.init_state(engine, target, draft, prompts, lengths, keys, 4, sampling, layout)
    )


def export_calls(fn, args, platforms=ACCELERATORS) -> set[str]:
    """Custom calls of ``fn`` exported for ``platforms`` (the export's own refusal of
    kernels without compatibility guarantees is lifted for ours, so that the module can
    be read and a leak reported, rather than ending the check)."""
    allow = [jax.export.DisabledSafetyCheck.custom_call(n) for n in sorted(cpu_kernels())]
    exported = jax.export.export(fn, platforms=platforms, disabled_checks=allow)(*args)
    return custom_calls(exported.mlir_module())


def _shapes(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def step_cases(arch: str, dtype: str, layouts: bool) -> dict[str, set[str]]:
    t_loaded, d_loaded = loaded(arch, dtype, 0), loaded(arch, dtype, 1)
    variants = {"float": (t_loaded, d_loaded)}
    if layouts:  # the CPU layouts, whose products run the kernels on a CPU
        variants["tiled/int8"] = (quantize.convert(t_loaded, "tiled"),
                                  quantize.convert(d_loaded, "int8"))  # fmt: skip
    out = {}
    for name, (tl, dl) in variants.items():
        target, draft = adapter.to_rsd_model(tl), adapter.to_rsd_model(dl)
        for text in METHODS:
            method = methods.parse(text)
            engine = decode.Engine(
                method, target.apply, draft.apply, target.vocab_size, eos_id=2,
                nucleus=nucleus.threshold,
            )  # fmt: skip
            state = _state_shapes(engine, target, draft if method.spec.depth else None)
            args = (state, _shapes(target.params), _shapes(draft.params))
            out[f"{arch} {dtype} {name} step {text}"] = export_calls(jax.jit(engine.step), args)
        cache = jax.eval_shape(lambda t=target: t.init_cache(2, 16))

        def prefill(params, tokens, cache, apply=target.apply):
            return kv_cache.prefill(apply, params, tokens, cache)

        args = (_shapes(target.params), jax.ShapeDtypeStruct((2, 8), jnp.int32), cache)
        out[f"{arch} {dtype} {name} prefill"] = export_calls(jax.jit(prefill), args)
    return out


def train_case(arch: str, dtype: str) -> dict[str, set[str]]:
    model = loaded(arch, dtype, 2)
    optimizer = optax.adamw(1e-3)
    trainable, frozen = train_lib.split_params(model.params, ("embed/embedding",))
    opt_state = jax.eval_shape(optimizer.init, trainable)
    batch = {"ids": jax.ShapeDtypeStruct((2, 8), jnp.int32),
             "top_logp": jax.ShapeDtypeStruct((2, 8, 4), jnp.float32),
             "cols": jax.ShapeDtypeStruct((2, 8, 4), jnp.int32)}  # fmt: skip
    step = train_lib.make_train_step(model.config, optimizer)
    args = (_shapes(trainable), opt_state, _shapes(frozen), batch)
    return {f"{arch} {dtype} distill train step": export_calls(step, args)}


def sharded_case(arch: str, dtype: str) -> dict[str, set[str]]:
    mesh = sharding.make_mesh(2, 4)
    target = sharding.place_model(adapter.to_rsd_model(loaded(arch, dtype, 0)), mesh)
    draft = sharding.place_model(adapter.to_rsd_model(loaded(arch, dtype, 1)), mesh)
    layout = sharding.Layout.for_models(mesh, target, draft)
    out = {}
    for text in ("rsd_s:2x2", "rsd_c:2-1/tv"):
        method = methods.parse(text)
        engine = decode.Engine(method, target.apply, draft.apply, target.vocab_size)
        state = _state_shapes(engine, target, draft, layout, batch=4)
        shardings = layout.state_shardings(state)
        state = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings
        )
        params = [jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                              sharding=x.sharding), m.params)
                  for m in (target, draft)]  # fmt: skip
        fn = jax.jit(layout.wrap(engine.step))
        out[f"{arch} {dtype} sharded 2x4 step {text}"] = export_calls(fn, (state, *params))
    return out


def negative_controls() -> dict[str, set[str]]:
    """The check must find the kernels here."""
    t, d = loaded("qwen2", "float32", 0), loaded("qwen2", "float32", 1)
    target = adapter.to_rsd_model(quantize.convert(t, "tiled"))
    draft = adapter.to_rsd_model(quantize.convert(d, "int8"))
    method = methods.parse("rsd_s:2x2")
    engine = decode.Engine(method, target.apply, draft.apply, target.vocab_size,
                           nucleus=nucleus.threshold)  # fmt: skip
    state = _state_shapes(engine, target, draft)
    args = (state, _shapes(target.params), _shapes(draft.params))
    out = {"tiled step exported for the cpu": export_calls(jax.jit(engine.step), args, ("cpu",))}
    x = jax.ShapeDtypeStruct((2, 16), jnp.float32)
    tiles = jax.ShapeDtypeStruct((2, 16, tiled_matmul.BLOCK), jnp.float32)
    out["a kernel without platform_dependent, for the tpu"] = export_calls(
        jax.jit(tiled_matmul._kernel), (x, tiles), ("tpu",)
    )
    return out


def main() -> None:
    kernels = tiled_matmul.cpu_kernel() and nucleus.cpu_kernel()
    cases: dict[str, set[str]] = {}
    for arch in ARCHS:
        for dtype in DTYPES:
            cases |= step_cases(arch, dtype, layouts=dtype == "float32" and arch == "qwen2")
            cases |= train_case(arch, dtype)
            cases |= sharded_case(arch, dtype)
    ours = cpu_kernels()
    result = {
        "kernels_built": bool(kernels),
        "devices": jax.device_count(),
        "cases": {k: sorted(v) for k, v in cases.items()},
        "leaks": {k: sorted(v & ours) for k, v in cases.items() if v & ours},
        "controls": {k: sorted(v & ours) for k, v in negative_controls().items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
