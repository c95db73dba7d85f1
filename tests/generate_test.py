"""rsd_jax.generation entry checks: prompt ids inside the vocabulary, trained context."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import toy
from rsd_jax import decode, methods
from rsd_jax import generation as gen

V = 4


def _model(max_positions=0, seed=0):
    table = toy.random_table(np.random.default_rng(seed), V, 2, alpha=0.6)
    return toy.as_model(table, max_positions)


@pytest.mark.parametrize(
    "prompts,bad",
    [
        ([[1, 2], [0, 3, 4]], "token id 4 (prompt 1, position 2)"),  # = V: an embedding OOB
        ([[1, -1, 2]], "token id -1 (prompt 0, position 1)"),  # would wrap to the last id
        ([[1, 2], [2**40]], "token id 1099511627776 (prompt 1, position 0)"),  # > int32
        ([[1, 2**70]], "token id 1180591620717411303424 (prompt 0, position 1)"),  # > int64
    ],
)
@pytest.mark.parametrize("method", ["ar", "sd:2"])
def test_out_of_vocabulary_ids_are_refused_naming_id_and_vocabulary(prompts, bad, method):
    model = _model()
    with pytest.raises(ValueError) as e:
        gen.generate(model, model, prompts, method, key=jax.random.PRNGKey(0), max_new_tokens=2)
    assert str(e.value) == f"{bad} is outside the vocabulary [0, {V})"


def test_non_integer_ids_are_refused():
    with pytest.raises(ValueError, match=r"prompt 0, position 1: token ids are integers, got 1.5"):
        gen.check_token_ids([[1, 1.5]], V)


def test_init_state_checks_ids_within_each_prompt_length_only():
    model = _model()
    engine = decode.Engine(methods.parse("ar"), model.apply, None, V)
    key = jax.random.PRNGKey(0)[None]
    padded = jnp.asarray([[1, 2, V + 3]], jnp.int32)  # position 2 is padding of a 2-token prompt
    gen.init_state(engine, model, None, padded, jnp.asarray([2]), key, 2)
    with pytest.raises(ValueError, match=r"token id 7 \(prompt 0, position 2\) is outside"):
        gen.init_state(engine, model, None, padded, jnp.asarray([3]), key, 2)


def test_passing_the_trained_context_warns_and_staying_inside_does_not():
    target, draft = _model(max_positions=8), _model(max_positions=0, seed=1)
    kw = dict(key=jax.random.PRNGKey(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 3 + 5 = 8 positions: no warning
        gen.generate(target, draft, [[1, 2, 3], [2, 1]], "sd:2", max_new_tokens=5, **kw)
    with pytest.warns(UserWarning) as record:
        gen.generate(target, draft, [[1, 2, 3], [2, 1]], "sd:2", max_new_tokens=6, **kw)
    assert [str(w.message) for w in record] == [
        "a prompt of 3 tokens + max_new_tokens=6 needs 9 positions, more than the target's "
        "trained context of 8: its predictions past position 8 are unreliable"
    ]  # the draft's context is unknown (0): no warning for it


def test_loaded_models_expose_their_trained_context():
    from models import adapter, testing
    from models.arch import decoder
    from models.loaded import LoadedModel

    config = testing.tiny_config("qwen2", rope_layout="rotate_half")
    loaded = LoadedModel(config, decoder.init_params(config, jax.random.key(0)), None)
    assert adapter.to_rsd_model(loaded).max_positions == config.max_positions == 128
