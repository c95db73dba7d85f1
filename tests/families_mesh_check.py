"""A sliding-window, mixed-layer model on meshes vs one device, in its own process.

``python -m tests.families_mesh_check`` (8 host devices, set here before jax starts) prints
one JSON line: for each mesh, whether greedy and sampled outputs equal the one-device run.
Run by ``tests/models_families_test.py``. The target is Gemma-3-like (local / global layers,
window 3, QK-norm, post norms, soft-caps), scanned, with 8 kv heads split over the model
axis; the draft is a Mistral-like window-3 model, unrolled. The caches' per-slot positions
then live split over the data axis like the keys.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "jax" not in sys.modules and "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.common import mesh as mesh_lib
from models import adapter, testing
from models.arch import decoder
from models.loaded import LoadedModel
from rsd_jax import generation as gen  # noqa: E402
from rsd_jax import sharding, transforms  # noqa: E402

VOCAB = 272  # splits over 8
GEMMA = dict(
    norm="rms_plus_one", post_norms=True, qk_norm=True, mlp="geglu_tanh", embed_scale=True,
    attn_scale=24**-0.5, attn_softcap=5.0, final_softcap=8.0, rope_local_theta=100.0,
)  # fmt: skip


def models():
    t_cfg = testing.tiny_config(
        "gemma3_text", vocab_size=VOCAB, valid_vocab_size=VOCAB, hidden=64, heads=16,
        kv_heads=8, head_dim=8, mlp_hidden=128, layers=3, rope_layout="rotate_half",
        tied_embeddings=True, sliding_window=3, scan_layers=True,
        layer_types=("sliding_attention", "full_attention", "sliding_attention"), **GEMMA,
    )  # fmt: skip
    d_cfg = testing.tiny_config(
        "mistral", vocab_size=VOCAB, valid_vocab_size=VOCAB, rope_layout="rotate_half",
        sliding_window=3,
    )  # fmt: skip
    out = []
    for seed, cfg in enumerate((t_cfg, d_cfg)):
        params = decoder.init_params(cfg, jax.random.PRNGKey(seed), noise=0.3)
        out.append(adapter.to_rsd_model(LoadedModel(cfg, params, None)))
    return out


def main():
    target, draft = models()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, VOCAB, size=int(rng.integers(4, 8))).tolist() for _ in range(8)]
    samplings = {
        "greedy": transforms.SamplingParams(temperature=0.0),
        "t1": transforms.SamplingParams(temperature=1.0),
    }
    kw = dict(key=jax.random.PRNGKey(7), max_new_tokens=12)
    result = {}
    for name, s in samplings.items():
        ref = gen.generate(target, draft, prompts, "rsd_s:2x2", sampling=s, **kw).tokens
        for mesh_text in ("2x4", "8x1"):
            mesh = mesh_lib.mesh_from_string(mesh_text)
            t, d = sharding.place_model(target, mesh), sharding.place_model(draft, mesh)
            out = gen.generate(t, d, prompts, "rsd_s:2x2", sampling=s, mesh=mesh, **kw).tokens
            result[f"{name}/{mesh_text}"] = out == ref
    print(json.dumps(result))


if __name__ == "__main__":
    main()
