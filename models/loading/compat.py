"""Whether a draft can propose tokens for a target: the same tokenizer on the ids both produce."""

from __future__ import annotations

from models.errors import IncompatibleModelsError
from models.loading import tokenizer as tokenizer_lib


def _id_table(tok: tokenizer_lib.Tokenizer, size: int) -> list[str | None]:
    """Token string of every id below `size` (None where the id has no token)."""
    table: list[str | None] = [None] * size
    for token, i in tok.backend.get_vocab(with_added_tokens=True).items():
        if i < size:
            table[i] = token
    return table


def _rules_difference(dt: tokenizer_lib.Tokenizer, tt: tokenizer_lib.Tokenizer) -> str | None:
    """Which text-splitting rule differs (model settings, merges, normalizer,
    pre-tokenizer), or None. The id table is compared separately."""
    ds, ts = dt._state(), tt._state()
    dm, tm = dict(ds["model"]), dict(ts["model"])
    for m in (dm, tm):
        m.pop("vocab", None)
    dmerges, tmerges = dm.pop("merges", None) or [], tm.pop("merges", None) or []
    if dmerges != tmerges:
        pairs = zip(dmerges, tmerges, strict=False)
        k = next((i for i, (x, y) in enumerate(pairs) if x != y), None)
        if k is None:
            return f"merges differ: the draft has {len(dmerges)}, the target {len(tmerges)}"
        return f"merges differ: #{k} is {dmerges[k]!r} in the draft, {tmerges[k]!r} in the target"
    for key in sorted(set(dm) | set(tm)):
        if dm.get(key) != tm.get(key):
            return (
                f"model setting {key!r} is {dm.get(key)!r} in the draft, "
                f"{tm.get(key)!r} in the target"
            )
    for part in ("normalizer", "pre_tokenizer"):
        if ds.get(part) != ts.get(part):
            return f"{part.replace('_', '-')}s differ: {ds.get(part)} vs {ts.get(part)}"
    return None


def check_compatible(draft, target) -> None:
    """Checks that a draft can propose tokens for a target: same tokenizer on the ids both
    can produce.

    The models may differ in padding: ids at or past `config.valid_vocab_size` (rows a
    checkpoint adds to round its embedding up, e.g. Qwen's 151,936 rows for 151,665 real
    ids) are never sampled, so neither their number nor their token strings matter. Note
    that `rsd_jax.generate` also needs equal logit widths (`config.vocab_size`): pad or crop
    one model's logits (with probability 0) when the row counts differ.

    Args:
      draft, target: LoadedModel (or any object with `.config` and `.tokenizer`).

    Raises:
      IncompatibleModelsError: naming the first difference found, in this order: a missing
        tokenizer, the tokenizer type, the number of valid ids, the first id whose token
        differs, BOS/EOS/add-BOS, the set of control ids, and merges / model settings /
        normalizer / pre-tokenizer.
    """
    dc, tc = draft.config, target.config
    dt, tt = draft.tokenizer, target.tokenizer
    if (dt is None) != (tt is None):
        raise IncompatibleModelsError("only one of draft and target has a tokenizer")
    if dt is not None and dt.kind() != tt.kind():
        raise IncompatibleModelsError(
            f"tokenizers differ: the draft's is {dt.kind()}, the target's {tt.kind()}"
        )
    if dc.valid_vocab_size != tc.valid_vocab_size:
        raise IncompatibleModelsError(
            f"vocabularies differ: draft has {dc.valid_vocab_size} valid ids ({dc.vocab_size} "
            f"rows), target has {tc.valid_vocab_size} ({tc.vocab_size} rows)"
        )
    if dt is None:
        return
    valid = dc.valid_vocab_size
    dtab, ttab = _id_table(dt, valid), _id_table(tt, valid)
    for i, (a, b) in enumerate(zip(dtab, ttab, strict=True)):
        if a != b:
            raise IncompatibleModelsError(
                f"tokenizers differ: id {i} is {a!r} in the draft but {b!r} in the target"
            )
    for attr in ("bos_id", "eos_id", "add_bos"):
        if getattr(dt, attr) != getattr(tt, attr):
            raise IncompatibleModelsError(
                f"tokenizers differ: draft {attr}={getattr(dt, attr)}, target {getattr(tt, attr)}"
            )
    dspecial = {i for i in dt.special_ids if i < valid}
    tspecial = {i for i in tt.special_ids if i < valid}
    if dspecial != tspecial:
        i = min(dspecial ^ tspecial)
        side = "draft" if i in dspecial else "target"
        raise IncompatibleModelsError(
            f"tokenizers differ: id {i} ({dtab[i]!r}) is a control token only in the {side}"
        )
    rules = _rules_difference(dt, tt)
    if rules:
        raise IncompatibleModelsError(f"tokenizers differ: {rules}")
