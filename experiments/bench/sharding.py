"""Benchmark (not a test): per-round time of the sharded decoding step, N fake CPU devices vs one.

    python -m experiments.bench.sharding                          # 8 fake CPU devices
    python -m experiments.bench.sharding --meshes=1x8+2x4 --method=rsd_c:2-2 --rounds=30

Sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts unless
``XLA_FLAGS`` is already set (on a real multi-device machine set it to anything, e.g. empty,
to keep the real devices). A tiny random target (split over the model axis) and draft decode
a batch of prompts; for each mesh, and for one device without a mesh, the jitted step runs
``--rounds`` rounds from a fresh prefilled state, best of ``--repeats`` passes that
interleave the settings. It also prints the collectives of each compiled step.

On CPU the fake devices share the same cores, so more devices are expected to be *slower*:
the point of the sharded step is correctness and the absence of weight gathers; speed needs
real accelerators.
"""

from __future__ import annotations

import os
import sys

if "jax" not in sys.modules and "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import time  # noqa: E402
from collections import Counter  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.common import mesh as mesh_lib
from experiments.common import runtime, strict_json
from models import adapter, testing
from models.arch import decoder
from models.loaded import LoadedModel
from rsd_jax import decode, methods, sharding, transforms  # noqa: E402
from rsd_jax import generation as gen  # noqa: E402

_MESHES = flags.DEFINE_string("meshes", "1x8+2x4+8x1", "'+'-separated DATAxMODEL meshes.")
_METHOD = flags.DEFINE_string("method", "rsd_s:2x2", "Decoding method.")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows (a multiple of every data axis).")
_ROUNDS = flags.DEFINE_integer("rounds", 20, "Timed rounds per pass.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved passes (best kept).")
_HIDDEN = flags.DEFINE_integer("hidden", 128, "Target width.")
_LAYERS = flags.DEFINE_integer("layers", 4, "Target layers.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")

VOCAB, VALID = 272, 265


def tiny_models(hidden: int, layers: int):
    """A target with 16 heads / 8 kv heads (split over up to 8 devices) and a 1-layer draft."""
    t_cfg = testing.tiny_config(
        "qwen2", vocab_size=VOCAB, valid_vocab_size=VALID, hidden=hidden, layers=layers,
        heads=16, kv_heads=8, head_dim=hidden // 16, mlp_hidden=2 * hidden,
    )  # fmt: skip
    d_cfg = testing.tiny_config("llama", vocab_size=VOCAB, valid_vocab_size=VALID, layers=1)
    return tuple(
        adapter.to_rsd_model(LoadedModel(c, decoder.init_params(c, jax.random.PRNGKey(i)), None))
        for i, c in enumerate((t_cfg, d_cfg))
    )


class Setting:
    """One placement (a mesh, or one device) with its compiled step."""

    def __init__(self, name, mesh, target, draft, method, batch, rounds):
        self.name, self.rounds = name, rounds
        if mesh is not None:
            target, draft = sharding.place_model(target, mesh), sharding.place_model(draft, mesh)
        self.layout = None if mesh is None else sharding.Layout.for_models(mesh, target, draft)
        self.target, self.draft = target, draft
        self.engine = decode.Engine(method, target.apply, draft.apply, VOCAB, VALID)
        rng = np.random.default_rng(0)
        self.prompts = [rng.integers(3, VALID, size=6).tolist() for _ in range(batch)]
        self.step = gen.jitted_step(self.engine, self.layout)
        self.max_new = rounds * (method.spec.depth + 1) + 1  # never finishes while timed
        state = self.fresh()
        text = self.step.lower(state, target.params, draft.params).compile().as_text()
        self.collectives = dict(Counter(c.kind for c in sharding.hlo_collectives(text)))
        jax.block_until_ready(self.step(state, target.params, draft.params))  # compile
        self.best = float("inf")

    def fresh(self):
        padded, lengths = gen.pad_prompts(self.prompts)
        keys = jax.random.split(jax.random.PRNGKey(1), len(self.prompts))
        sampling = transforms.SamplingParams(temperature=1.0)
        return jax.block_until_ready(
            gen.init_state(
                self.engine, self.target, self.draft, padded, lengths, keys, self.max_new,
                sampling, self.layout,
            )
        )  # fmt: skip

    def timed_pass(self) -> float:
        state = self.fresh()
        start = time.perf_counter()
        for _ in range(self.rounds):
            state = self.step(state, self.target.params, self.draft.params)
        jax.block_until_ready(state)
        per_round = (time.perf_counter() - start) / self.rounds
        self.best = min(self.best, per_round)
        return per_round


def main(argv):
    del argv
    runtime.announce()
    target, draft = tiny_models(_HIDDEN.value, _LAYERS.value)
    method = methods.parse(_METHOD.value)
    settings = [Setting("1 device", None, target, draft, method, _BATCH.value, _ROUNDS.value)]
    for text in filter(None, _MESHES.value.split("+")):
        mesh = mesh_lib.mesh_from_string(text)
        settings.append(Setting(text, mesh, target, draft, method, _BATCH.value, _ROUNDS.value))
    for _ in range(_REPEATS.value):
        for s in settings:
            s.timed_pass()
    base = settings[0].best
    print(
        f"{method.describe()}, batch {_BATCH.value}, target {_LAYERS.value} layers x "
        f"{_HIDDEN.value} wide, {jax.device_count()} {jax.default_backend()} devices, "
        f"best of {_REPEATS.value} x {_ROUNDS.value} rounds"
    )
    print("| placement | ms / round | vs 1 device | collectives in the compiled step |")
    print("|---|---|---|---|")
    rows = []
    for s in settings:
        coll = ", ".join(f"{k} {v}" for k, v in sorted(s.collectives.items())) or "none"
        print(f"| {s.name} | {1e3 * s.best:.2f} | {s.best / base:.2f}x | {coll} |")
        rows.append(dict(placement=s.name, seconds_per_round=s.best, collectives=s.collectives))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            strict_json.dump(dict(method=_METHOD.value, batch=_BATCH.value, rows=rows), f, indent=2)


if __name__ == "__main__":
    runtime.quiet_backend_probe()
    app.run(main)
