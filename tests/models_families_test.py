"""The families beyond llama/qwen2 against transformers' own modules, on tiny random models.

Each case builds a small model with transformers' config class (weights redrawn so that
norms, biases and soft-caps matter), saves it as safetensors and loads it with
`models.load_model`. Checked: the logits of a prefill plus a KV-cached one-token decode, and
of a draft tree scored in one call (`prefix_tree_mask`, positions = prefix + depth), against
transformers run on the whole sequence / on each root-to-leaf branch. The sliding-window
cases use a window (5) shorter than prompt + tree (8 + 4), so a window counted in cache
slots instead of positions would fail. Then greedy decoding through the engine on a tiny
sliding-window model equals autoregressive greedy decoding for every kind of method.

Tolerance: both sides are float32 on the same weights, so the logits differ only by
summation order and transcendental implementations (~1e-6 relative); the bound is
1e-4 * max(1, max |logit|).

Needs torch and transformers (the `test` extra; see README). Outside CI a missing one skips
this module with the reason; in CI (CI=true) it is an error.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from models import adapter, load_model, testing
from models.arch import decoder, sharding
from models.loaded import LoadedModel
from models.loading import hf_loader
from rsd_jax import generation as gen
from rsd_jax import kv_cache, transforms


def _require(name):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            raise ImportError(f"{name} is needed by this test in CI: {e}") from e
        pytest.skip(
            f"{name} is not installed ({e}); install CPU torch and the test extra (README)",
            allow_module_level=True,
        )


torch = _require("torch")
transformers = _require("transformers")

WINDOW, PROMPT, CAP = 5, 8, 32
SMALL = dict(
    vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64)  # fmt: skip
OPT = dict(vocab_size=96, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
           num_attention_heads=4, max_position_embeddings=64)  # fmt: skip
GEMMA3_ROPE = {
    "sliding_attention": dict(rope_type="default", rope_theta=100.0),
    "full_attention": dict(rope_type="linear", factor=2.0, rope_theta=10000.0),
}
# name -> (transformers config class, its arguments). head_dim 16 puts the llama3
# wavelengths (6.3 .. 2e4) on both sides of 64/4 and 64/1: all three branches are used.
CASES = {
    "llama3-untied": ("LlamaConfig", SMALL | dict(rope_scaling=LLAMA3)),
    "llama-linear-tied": (
        "LlamaConfig",
        SMALL | dict(rope_scaling=dict(rope_type="linear", factor=2.0), tie_word_embeddings=True),
    ),
    "llama-yarn": (
        "LlamaConfig",
        SMALL
        | dict(
            rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=32)
        ),
    ),  # fmt: skip
    "mistral-window": ("MistralConfig", SMALL | dict(sliding_window=WINDOW)),
    "gemma2-softcap": (
        "Gemma2Config",
        SMALL
        | dict(
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        ),
    ),  # fmt: skip
    "gemma3-local-global": (
        "Gemma3TextConfig",
        SMALL
        | dict(
            num_hidden_layers=4,
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            layer_types=[
                "sliding_attention",
                "sliding_attention",
                "full_attention",
                "sliding_attention",
            ],
            rope_parameters=GEMMA3_ROPE,
        ),
    ),  # fmt: skip
    "opt-tied": ("OPTConfig", OPT),
    "opt-postnorm-project": (
        "OPTConfig",
        OPT | dict(do_layer_norm_before=False, word_embed_proj_dim=32),
    ),  # fmt: skip
}
WINDOWED = ("mistral-window", "gemma2-softcap", "gemma3-local-global")
# A tree over slots 0..6 (slot 0 = root); parents in BFS order, depths 0 1 1 2 2 3 3.
PARENTS = (-1, 0, 0, 1, 1, 3, 3)


def _redraw(model, seed):
    """Weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1/D), norms and biases their init plus
    N(0, 0.1^2), so that every term (norm weights, biases, caps) changes the logits."""
    gen_ = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen_)
            if p.ndim == 1:
                p.add_(0.1 * noise)
            else:
                p.copy_(noise / np.sqrt(p.shape[1]))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (transformers model, our LoadedModel), each built once."""
    cache = {}

    def get(name):
        if name not in cache:
            cls, kwargs = CASES[name]
            hf_config = getattr(transformers, cls)(**kwargs)
            hf_config._attn_implementation = "eager"  # soft-capping needs eager attention
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(hf_config).float().eval()
            _redraw(model, seed=len(cache))
            directory = tmp_path_factory.mktemp(name)
            model.save_pretrained(directory)
            assert (directory / "model.safetensors").is_file()
            cache[name] = model, load_model(directory)
        return cache[name]

    return get


def _hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([list(ids)]), use_cache=False)
    return out.logits[0].float().numpy()


def _tolerance(ref):
    return 1e-4 * max(1.0, float(np.max(np.abs(ref))))


def _ids(rng, n, vocab):
    return [int(i) for i in rng.integers(3, vocab, n)]


@pytest.mark.parametrize("name", list(CASES))
def test_prefill_and_cached_decode_match_transformers(built, name):
    hf, ours = built(name)
    c = ours.config
    ids = _ids(np.random.default_rng(1), 12, c.vocab_size)
    ref = _hf_logits(hf, ids)
    t = len(ids) - 1
    cache = decoder.init_cache(c, 1, CAP)
    tokens = jnp.asarray([ids], jnp.int32)
    positions = jnp.arange(t)[None]
    mask = decoder.causal_mask(cache.index, t, CAP)
    first, cache = decoder.forward(c, ours.params, tokens[:, :t], positions, mask, cache)
    mask = (jnp.arange(CAP) <= t)[None, None]
    last, cache = decoder.forward(c, ours.params, tokens[:, t:], jnp.asarray([[t]]), mask, cache)
    got = np.concatenate([np.asarray(first[0]), np.asarray(last[0])])
    err = float(np.max(np.abs(got - ref)))
    print(f"{name}: max |logit diff| {err:.2e} (scale {np.max(np.abs(ref)):.1f})")
    assert err <= _tolerance(ref), f"{name}: {err}"


@pytest.mark.parametrize("name", list(CASES))
def test_tree_scoring_matches_transformers_per_branch(built, name):
    hf, ours = built(name)
    c = ours.config
    rng = np.random.default_rng(2)
    prompt = _ids(rng, PROMPT, c.vocab_size)
    tree = _ids(rng, len(PARENTS), c.vocab_size)
    depth, ancestors = [], np.zeros((len(PARENTS), len(PARENTS)), bool)
    for j, parent in enumerate(PARENTS):
        depth.append(0 if parent < 0 else depth[parent] + 1)
        ancestors[j, j] = True
        if parent >= 0:
            ancestors[j] |= ancestors[parent]
    cache = decoder.init_cache(c, 1, CAP)
    mask = decoder.causal_mask(cache.index, PROMPT, CAP)
    positions = jnp.arange(PROMPT)[None]
    _, cache = decoder.forward(c, ours.params, jnp.asarray([prompt]), positions, mask, cache)
    mask = kv_cache.prefix_tree_mask(jnp.asarray([PROMPT]), jnp.asarray(ancestors)[None], CAP)
    positions = PROMPT + jnp.asarray([depth], jnp.int32)
    got, _ = decoder.forward(c, ours.params, jnp.asarray([tree]), positions, mask, cache)
    got = np.asarray(got[0])
    leaves = [j for j in range(len(PARENTS)) if j not in PARENTS]
    worst = 0.0
    for leaf in leaves:
        path = [j for j in range(len(PARENTS)) if ancestors[leaf, j]]  # root .. leaf
        ref = _hf_logits(hf, prompt + [tree[j] for j in path])[PROMPT:]
        err = float(np.max(np.abs(got[path] - ref)))
        assert err <= _tolerance(ref), f"{name}, branch to {leaf}: {err}"
        worst = max(worst, err)
    print(f"{name}: tree vs branches max |logit diff| {worst:.2e}")


@pytest.mark.parametrize("name", ["mistral-window", "gemma3-local-global"])
def test_scanned_layers_match_the_loop(built, name):
    """Under a scan the layers select their window and RoPE per layer (Gemma 3 mixes)."""
    _, ours = built(name)
    config, params = testing.scanned(ours.config, ours.params)
    ids = jnp.asarray([_ids(np.random.default_rng(3), 12, config.vocab_size)])
    outs = []
    for c, p in ((ours.config, ours.params), (config, params)):
        cache = decoder.init_cache(c, 1, CAP)
        mask = decoder.causal_mask(cache.index, 12, CAP)
        outs.append(decoder.forward(c, p, ids, jnp.arange(12)[None], mask, cache)[0])
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_save_hf_dir_round_trip_and_transformers_reads_it(built, name, tmp_path):
    """Our export reloads as the same config and params, and transformers reading it
    computes the logits of the model it was made from."""
    hf, ours = built(name)
    hf_loader.save_hf_dir(ours.config, ours.params, tmp_path)
    again = load_model(tmp_path)
    assert again.config == ours.config
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(ours.params), strict=True):
        np.testing.assert_array_equal(a, b)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    )
    ids = _ids(np.random.default_rng(4), 12, ours.config.vocab_size)
    ref = _hf_logits(hf, ids)
    np.testing.assert_allclose(_hf_logits(theirs.float().eval(), ids), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_every_parameter_has_a_partition_rule(built, name):
    """Tensor parallelism: each family's params get specs (no rule would raise)."""
    _, ours = built(name)
    specs = sharding.param_specs(ours.params, ours.config, model=2)
    specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    assert len(specs) == len(jax.tree.leaves(ours.params))
    assert all(isinstance(spec, P) for spec in specs)


def _tiny_windowed_pair():
    """A tiny sliding-window target and a draft close to it (its weights plus 5% noise), so
    that drafts are accepted deep into trees, where BFS slots differ from positions."""
    config = testing.tiny_config(
        "mistral", rope_layout="rotate_half", tied_embeddings=False, sliding_window=3,
        name="tiny-window",
    )  # fmt: skip
    params = decoder.init_params(config, jax.random.key(0), noise=0.3)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [
        x + 0.05 * jnp.std(x) * jax.random.normal(k, x.shape)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return tuple(
        adapter.to_rsd_model(LoadedModel(config, p, None))
        for p in (params, jax.tree.unflatten(treedef, noisy))
    )


@pytest.mark.parametrize(
    "method", ["sd:4", "mrs:2x2", "spectr:2x2", "rsd_c:2-2-1", "rsd_s:2x3", "sd:3/tv"]
)
def test_greedy_engine_on_a_window_shorter_than_prompt_plus_tree_equals_ar(method):
    """Window 3 < prompt 5 + tree depth: tree scoring and commits must keep positions.

    (Counting the window in cache slots instead makes every tree method here fail; chains
    put depth d at slot prefix + d, so sd checks the commits only.)
    """
    target, draft = _tiny_windowed_pair()
    prompts = [[5, 9, 14, 20, 7], [30, 8, 11]]
    greedy = transforms.SamplingParams(temperature=0.0)
    kw = dict(key=jax.random.PRNGKey(0), max_new_tokens=16, sampling=greedy)
    ref = gen.generate(target, None, prompts, "ar", **kw)
    out = gen.generate(target, draft, prompts, method, **kw)
    assert out.tokens == ref.tokens


def test_windowed_models_on_meshes_equal_one_device():
    """tests/families_mesh_check.py in its own 8-device process: a scanned Gemma-3-like
    target and a Mistral-like draft (window 3) decode the same tokens on 2x4 and 8x1 meshes
    as on one device, greedy and sampled with the same keys."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.families_mesh_check"],
        capture_output=True, text=True, env=env, timeout=900,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result and all(result.values()), result
