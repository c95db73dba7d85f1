"""Distillation on tiny models: the step learns, resuming is exact, the export loads back
with the same logits, and every method stays lossless with a trained draft."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common.checks import ConfigError
from experiments.configs import distill as distill_config
from experiments.distill import data as distill_data
from experiments.distill import evaluate as distill_eval
from experiments.distill import job as distill
from experiments.distill import settings as distill_settings
from experiments.distill import train as train_lib
from models import adapter, drafts, loading, testing
from models.arch import decoder
from models.arch import head as head_lib
from models.loaded import LoadedModel
from models.loading import draft_dir
from models.loading import tokenizer as tokenizer_lib
from tests import lawcheck
from tests import models_draft_vocab_test as dv

SEQ, TRAIN, HELD = 12, 16, 4


def _laws(target: LoadedModel, seed: int, num: int, top_k: int) -> dict:
    ids = jax.random.randint(jax.random.PRNGKey(seed), (num, SEQ), 0, target.config.vocab_size)
    model = adapter.to_rsd_model(target)
    fn = distill_data.make_teacher_fn(model.apply, top_k)
    top_logp, top_ids = fn(target.params, ids, model.init_cache(num, SEQ))
    return {"ids": np.asarray(ids), "top_logp": np.asarray(top_logp),
            "top_ids": np.asarray(top_ids)}  # fmt: skip


def _pair(vocab: int = dv.V):
    kw = dict(vocab_size=vocab, valid_vocab_size=vocab, bos_id=-1, eos_id=-1, pad_id=-1)
    target = dv._loaded("qwen2", 1, **kw)
    base = dv._loaded("qwen2", 2, layers=3, **kw)
    return target, drafts.prune(base, [0, 2])


def _config(**kw):
    text = dict(steps=6, batch=4, train_sequences=TRAIN, heldout_sequences=HELD, seq_len=SEQ,
                eval_every=3, checkpoint_every=2, warmup_steps=1, learning_rate=3e-2,
                top_k=dv.V, progress=False, plots=False, evaluate=False) | kw  # fmt: skip
    config = distill_config.get_config(",".join(f"{k}={v}" for k, v in text.items()))
    return distill_settings.from_config(config)


def test_one_train_step_lowers_the_loss_on_a_fixed_batch():
    target, small = _pair()
    laws = _laws(target, 0, 4, dv.V)
    trainable, frozen = train_lib.split_params(small.params, ("embed/embedding",))
    assert "embed/embedding" in frozen and "embed/embedding" not in trainable
    lookup = train_lib.column_lookup(small.config, small.params)
    batch = {"ids": jnp.asarray(laws["ids"]), "top_logp": jnp.asarray(laws["top_logp"]),
             "cols": jnp.asarray(lookup[laws["top_ids"]])}  # fmt: skip
    evaluate = train_lib.make_eval(small.config)
    before = float(evaluate(trainable, frozen, batch)["kl"])
    optimizer = train_lib.make_optimizer(train_lib.Hyper(1e-2, 0, 10, 0.0, 1.0))
    step = train_lib.make_train_step(small.config, optimizer)
    trainable, _, stats = step(trainable, optimizer.init(trainable), frozen, batch)
    after = float(evaluate(trainable, frozen, batch)["kl"])
    assert float(stats["loss"]) == pytest.approx(before, rel=1e-5)  # the step saw this loss
    assert before > 0.01 and after < before - 1e-3, (before, after)


def test_coarse_kl_is_zero_for_the_teachers_own_law_and_positive_otherwise():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7)) * 2
    logp = jax.nn.log_softmax(logits)
    top_logp, top_ids = jax.lax.top_k(logp, 4)
    kl, agree, overlap = train_lib.coarse_kl(logits, top_logp, top_ids)
    np.testing.assert_allclose(kl, 0.0, atol=1e-6)
    assert bool(agree.all())
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)
    kl2, _, overlap2 = train_lib.coarse_kl(logits[..., ::-1], top_logp, top_ids)
    assert float(kl2.min()) > 1e-3 and float(overlap2.max()) < 1.0
    # An id the student cannot score moves its mass to the rest bucket.
    cols = top_ids.at[..., 1].set(-1)
    kl3, _, _ = train_lib.coarse_kl(logits, top_logp, cols)
    assert np.isfinite(np.asarray(kl3)).all()


def test_resume_equals_uninterrupted_bit_for_bit(tmp_path):
    target, small = _pair()
    laws, held = _laws(target, 0, TRAIN, dv.V), _laws(target, 1, HELD, dv.V)
    config = _config()
    full, hist_full, _ = distill.train(config, small, laws, held, tmp_path / "a", log=print)

    class Stop(Exception):
        pass

    def stop_at_3(step):
        if step == 3:  # after the checkpoint of step 2 and one more step
            raise Stop

    with pytest.raises(Stop):
        distill.train(config, small, laws, held, tmp_path / "b", on_step=stop_at_3)
    resumed, hist_resumed, _ = distill.train(config, small, laws, held, tmp_path / "b")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(full.params),
                            jax.tree.leaves(resumed.params), strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    losses = lambda h: [(r["step"], r.get("loss"), r.get("heldout_kl")) for r in h]  # noqa: E731
    assert losses(hist_full) == losses(hist_resumed)
    assert hist_full[-1]["heldout_kl"] < hist_full[0]["heldout_kl"]  # it learnt something
    # The student really changed, and the model it was pruned from was not consumed.
    assert not np.array_equal(full.params["layers_0"]["mlp"]["up"]["kernel"],
                              small.params["layers_0"]["mlp"]["up"]["kernel"])  # fmt: skip


def test_a_checkpoint_of_another_student_is_refused(tmp_path):
    target, small = _pair()
    laws, held = _laws(target, 0, TRAIN, dv.V), _laws(target, 1, HELD, dv.V)
    distill.train(_config(steps=2), small, laws, held, tmp_path)
    other = drafts.prune(dv._loaded("qwen2", 2, layers=3, vocab_size=dv.V, valid_vocab_size=dv.V,
                                     bos_id=-1, eos_id=-1, pad_id=-1), [0])  # fmt: skip
    with pytest.raises(ValueError, match="lacks|expected"):
        distill.train(_config(steps=2), other, laws, held, tmp_path)


@pytest.mark.parametrize("restricted", [False, True])
def test_export_loads_back_with_identical_logits(tmp_path, restricted):
    (tmp_path / "tok").mkdir()
    testing.write_tiny_tokenizer_files(tmp_path / "tok", "{{ messages[0]['content'] }}")
    tok = tokenizer_lib.from_files(tmp_path / "tok")
    cfg = testing.tiny_config("qwen2", valid_vocab_size=testing.tiny_config().vocab_size - 2)
    model = LoadedModel(cfg, decoder.init_params(cfg, jax.random.PRNGKey(3), noise=0.3), tok)
    if restricted:
        model = head_lib.restrict_head(model, list(range(3, 120)))
    draft_dir.export(model, tmp_path / "draft", extra={"note": "test"})
    loaded = loading.load_model(tmp_path / "draft")
    assert loaded.config.head_vocab == model.config.head_vocab
    assert loaded.config.valid_vocab_size == cfg.valid_vocab_size
    loading.check_compatible(loaded, model._replace(config=model.config))
    # The weightless load the speculative job checks compatibility with agrees.
    info = loading.load_model_info(tmp_path / "draft")
    assert info.config.valid_vocab_size == cfg.valid_vocab_size < info.config.vocab_size
    loading.check_compatible(info, model)
    tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 9), 0, cfg.valid_vocab_size)
    pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
    out = []
    for m in (model, loaded):
        cache = decoder.init_cache(m.config, 2, 9)
        mask = decoder.causal_mask(cache.index, 9, 9)
        out.append(np.asarray(decoder.forward(m.config, m.params, tokens, pos, mask, cache)[0]))
    np.testing.assert_allclose(out[1], out[0], rtol=0, atol=1e-6)


@functools.cache
def _trained_draft():
    target, small = _pair()
    laws, held = _laws(target, 0, TRAIN, dv.V), _laws(target, 1, HELD, dv.V)
    with tempfile.TemporaryDirectory() as workdir:
        trained, hist, _ = distill.train(_config(steps=8), small, laws, held, Path(workdir))
    assert hist[-1]["heldout_kl"] < hist[0]["heldout_kl"]
    return target, trained


@pytest.mark.parametrize("method", ["sd:3", "spectr:2x2", "rsd_c:2-2", "rsd_s:3x2/tv"])
def test_every_method_stays_lossless_with_a_trained_draft(method):
    target, trained = _trained_draft()
    counts = dv._counts(method, target, trained)
    assert lawcheck.chi2_pvalue(counts, dv._exact_law(target)) >= lawcheck.ALPHA


def test_the_trained_drafts_own_law_is_not_the_targets():
    """Negative control: sampling from the trained draft itself fails the same test."""
    target, trained = _trained_draft()
    counts = dv._counts("ar", trained, None)
    assert lawcheck.chi2_pvalue(counts, dv._exact_law(target)) < lawcheck.ALPHA


class _CharTokenizer:
    eos_id = 0

    def encode(self, text, add_bos=False):
        return [ord(ch) % 250 + 1 for ch in text]


def test_training_and_heldout_sequences_come_from_disjoint_turns(monkeypatch):
    turns = [f"turn{i:03d}:" + "abcdefghij"[i % 10] * 30 for i in range(200)]
    monkeypatch.setattr(distill_data.datasets, "vocabulary_corpus", lambda max_chars: turns)
    train, held = distill_data.sequences(_CharTokenizer(), 16, 20, 4)
    assert train.ids.shape == (20, 16) and held.ids.shape == (4, 16)
    text = lambda ids: "".join(chr(i - 1) if i else "|" for i in ids.ravel())  # noqa: E731
    held_turns = {t for t in text(held.ids).split("|") if t.startswith("turn")}
    train_turns = {t for t in text(train.ids).split("|") if t.startswith("turn")}
    assert held_turns and train_turns and not held_turns & train_turns
    assert all(int(t[4:7]) % distill_data.HELDOUT_EVERY == 0 for t in held_turns)
    # Asking for more sequences only appends: the first ones are unchanged.
    more, _ = distill_data.sequences(_CharTokenizer(), 16, 30, 4)
    np.testing.assert_array_equal(more.ids[:20], train.ids)


class _ChatCharTokenizer(_CharTokenizer):
    def apply_chat_template(self, messages, add_generation_prompt=True):
        assert not add_generation_prompt  # whole conversations, not a prompt
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)


def _sharegpt(tmp_path, monkeypatch, n=60):
    convs = []
    for i in range(n):
        turns = [{"from": "human", "value": f"first{i}"}, {"from": "gpt", "value": "reply"}]
        turns += [{"from": "human", "value": f"later{i} " * 20}, {"from": "system", "value": "x"}]
        turns += [{"from": "gpt", "value": f"answer{i} " * 20}]
        convs.append({"id": str(i), "conversations": turns})
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(convs))
    monkeypatch.setattr(distill_data.datasets, "locate", lambda source: path)


def test_mix_corpus_alternates_chat_templates_and_python_code(tmp_path, monkeypatch):
    _sharegpt(tmp_path, monkeypatch)
    docs = distill_data.documents(_ChatCharTokenizer(), "mix", 40_000)
    chat = [d for d in docs if d.startswith("<user>")]
    code = [d for d in docs if not d.startswith("<user>")]
    assert docs[0] in chat and docs[1] in code  # alternating while both kinds last
    want = "<user>" + ("later0 " * 20).strip() + "<assistant>" + ("answer0 " * 20).strip()
    assert chat[0] == want  # the first exchange and the system turn left out
    assert all(d.startswith("<user>") and "first" not in d for d in chat)
    assert len(chat) == 60 and any("def " in d for d in code)
    assert 15_000 < sum(map(len, chat)) < 30_000 and 20_000 <= sum(map(len, code)) < 80_000
    train, held = distill_data.sequences(_ChatCharTokenizer(), 32, 40, 4, corpus="mix")
    assert train.ids.shape == (40, 32) and held.ids.shape == (4, 32)
    with pytest.raises(ValueError, match="unknown corpus"):
        distill_data.documents(_ChatCharTokenizer(), "web", 100)


def test_teacher_laws_compute_missing_chunks_only_and_refuse_other_tokens(tmp_path):
    data = distill_data.Split(np.arange(5 * 4, dtype=np.int32).reshape(5, 4))
    calls = []

    def compute(ids):
        calls.append(len(ids))
        return ids[..., None].astype(np.float32), ids[..., None]

    first = distill_data.teacher_laws(tmp_path, "train", data, compute, chunk=2)
    assert calls == [2, 2, 1]
    (tmp_path / "train_00001.npz").unlink()  # an interrupted run lost one chunk
    again = distill_data.teacher_laws(tmp_path, "train", data, compute, chunk=2)
    assert calls == [2, 2, 1, 2]
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    other = distill_data.Split(data.ids + 1)
    with pytest.raises(ValueError, match="other tokens"):
        distill_data.teacher_laws(tmp_path, "train", other, compute, chunk=2)


def test_batches_depend_on_the_step_alone():
    a = distill_data.batches(10, 3, seed=0, start_step=0)
    steps = [next(a) for _ in range(7)]
    b = distill_data.batches(10, 3, seed=0, start_step=4)
    for i in range(4, 7):
        np.testing.assert_array_equal(next(b), steps[i])
    assert len(set(np.concatenate(steps[:3]).tolist())) == 9  # an epoch draws without repeats


def test_bad_distill_configs_fail_before_anything_loads(tmp_path):
    for bad, key in (("steps=0", "steps"), ("kv_heads=3", "kv_heads"), ("batch=999", "batch"),
                     ("init=grow", "init"), ("eval_methods=xx:1", "eval_methods"),
                     ("learning_rate=-1.0", "learning_rate"), ("keep_layers=a", "keep_layers"),
                     ("eval_temperatures=-1", "eval_temperatures")):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            distill.run(
                distill_settings.from_config(distill_config.get_config(bad)), tmp_path / "w"
            )
    assert not (tmp_path / "w").exists()


def test_a_workdir_of_another_distillation_is_refused(tmp_path):
    distill.check_workdir(tmp_path, _config())
    distill.check_workdir(tmp_path, _config(evaluate=True))  # evaluation keys may change
    with pytest.raises(distill.IncompatibleWorkdirError, match="steps"):
        distill.check_workdir(tmp_path, _config(steps=7))


def test_evaluation_summary_pairs_with_ar_and_reads_acceptance_by_depth():
    # hist[a] = rounds accepting exactly a tokens: 10 rounds, 6 reach depth 1, 2 depth 2.
    assert distill_eval.acceptance_by_depth([4, 4, 2]) == [0.6, 2 / 6]
    assert distill_eval.acceptance_by_depth([3, 0, 0]) == [0.0, None]
    base = dict(temperature=1.0, round_seconds=0.1)
    recs = [
        base | dict(prompt="a", draft="-", method="ar", num_tokens=10, seconds=2.0,
                    generated=10, target_calls=10, accepted_hist=[10]),
        base | dict(prompt="a", draft="d", method="sd:2", num_tokens=10, seconds=1.0,
                    generated=10, target_calls=4, accepted_hist=[1, 1, 2]),
        base | dict(prompt="b", draft="d", method="sd:2", num_tokens=10, seconds=9.0,
                    generated=10, target_calls=6, accepted_hist=[4, 2, 0]),
    ]  # fmt: skip
    (ar, sd) = distill_eval.summarise(recs, [1.0])["1"]
    assert ar["method"] == "ar" and ar["ratio_vs_ar"] == 1.0
    assert sd["block_efficiency"] == 20 / 10
    assert sd["ratio_vs_ar"] == pytest.approx((10 / 1.0) / (10 / 2.0))  # prompt b has no AR
    assert sd["acceptance_by_depth"] == [5 / 10, 2 / 5]  # summed hist [5, 3, 2]
