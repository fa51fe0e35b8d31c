"""Documents streamed from the user's files or a named corpus, and the fixed validation split.

The documents, their order and the validation split are the byte corpus's (proxies/quality/corpus.py), so shards
made with the `bytes` tokenizer hold exactly the byte corpus's train and validation bytes:
- named corpora `wikipedia*`: an article is held out when the hash of "<language>/<title>" falls in the lowest
  val_fraction (corpus._held_out), whatever the order or number of articles;
- everything else: the trailing documents holding at least val_fraction of the bytes, one document at least
  left for training; a single document is cut at the byte position, moved to the next line break when close.

Inputs: a .txt file (one document of raw bytes, read CHUNK bytes at a time), a .jsonl file (one JSON object per
line, text in `text_field`), a .parquet file (column `text_field`, read a record batch at a time), a directory of
such files (recursive, sorted, hidden ones skipped), a Hugging Face dataset saved with `save_to_disk` (its Arrow
files, read with pyarrow: `datasets` need not be installed), or the name of a corpus (wikipedia, wikipedia_en,
pydoc). Memory holds one chunk, one line or one record batch at a time, whatever the corpus size.
"""

from __future__ import annotations

import codecs
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from flashsearch.errors import FlashsearchError

CHUNK = 1 << 20                                   # bytes of a .txt file read at a time
BATCH_ROWS = 1024                                 # rows of a .parquet / Arrow file read at a time
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
HF_STATE = "state.json"                           # what `Dataset.save_to_disk` writes next to its Arrow files


@dataclass(frozen=True)
class Document:
    """One document: its size in bytes (known before it is read) and its text, in chunks."""

    size: int
    read: Callable[[], Iterator[bytes]]
    where: str                                    # the file it is in, for error messages
    key: tuple[str, str] | None = None            # (language, title): the hash split of named corpora

    @classmethod
    def in_memory(cls, data: bytes, where: str, key: tuple[str, str] | None = None) -> "Document":
        """A document already read (one JSON line, one column value, one article): one chunk."""
        return cls(len(data), lambda: iter((data,)), where, key)


# ---- files -------------------------------------------------------------------------------------------------------

def _txt(path: Path) -> Iterator[Document]:
    size = path.stat().st_size

    def read() -> Iterator[bytes]:
        seen = 0
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                seen += len(chunk)
                yield chunk
        if seen != size:
            raise FlashsearchError(f"{path} changed size while it was being prepared ({size} -> {seen} bytes)")

    if size:
        yield Document(size, read, str(path))


def jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    """One Document per non-empty JSON line's `text_field`; bad lines are one error naming file and line."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FlashsearchError(f"{path}:{lineno} is not valid UTF-8 ({exc.reason}); JSONL data must be "
                                       "UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FlashsearchError(f"{path}:{lineno}: invalid JSON ({exc.msg}); each line must be one JSON "
                                       "object") from None
            if not isinstance(record, dict) or text_field not in record:
                raise FlashsearchError(f"{path}:{lineno}: no field {text_field!r} in this JSON line; pass "
                                       "--text-field (data.text_field) naming the field that holds the text")
            text = record[text_field]
            if not isinstance(text, str):
                raise FlashsearchError(f"{path}:{lineno}: field {text_field!r} must be a string, got "
                                       f"{type(text).__name__}")
            if text:
                yield Document.in_memory(text.encode("utf-8"), f"{path}:{lineno}")


def _column_texts(batches: Iterator[Any], names: list[str], where: str, text_field: str) -> Iterator[Document]:
    """Documents from Arrow record batches (parquet or a saved dataset), one batch in memory at a time."""
    if text_field not in names:
        raise FlashsearchError(f"{where} has no column {text_field!r} (columns: {', '.join(names) or 'none'}); "
                               "pass --text-field naming the column that holds the text")
    row = 0
    for batch in batches:
        for text in batch.column(batch.schema.get_field_index(text_field)).to_pylist():
            row += 1
            if text is None:
                continue
            if not isinstance(text, str):
                raise FlashsearchError(f"{where} row {row}: column {text_field!r} must hold strings, got "
                                       f"{type(text).__name__}")
            if text:
                yield Document.in_memory(text.encode("utf-8"), f"{where} row {row}")


def _parquet(path: Path, text_field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        raise FlashsearchError(f"cannot read {path} as parquet: {str(exc).splitlines()[0]}") from None
    names = list(pf.schema_arrow.names)
    batches = pf.iter_batches(batch_size=BATCH_ROWS, columns=[text_field]) if text_field in names else iter(())
    yield from _column_texts(batches, names, str(path), text_field)


def _saved_dataset(folder: Path, text_field: str) -> Iterator[Document]:
    """A `datasets.Dataset.save_to_disk` folder: state.json lists its Arrow (IPC stream) files in order."""
    import pyarrow as pa

    try:
        state = json.loads((folder / HF_STATE).read_text())
        files = [folder / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FlashsearchError(f"{folder / HF_STATE} is not a saved Hugging Face dataset's state ({exc})") from None
    if state.get("_indices_data_files"):  # rows reordered through an index file: read in the wrong order here
        raise FlashsearchError(f"saved dataset {folder} has an indices mapping; save it again after "
                               "dataset.flatten_indices()")
    for path in files:
        if not path.is_file():
            raise FlashsearchError(f"saved dataset {folder}: its data file {path.name} is missing")
        with pa.memory_map(str(path)) as src:
            reader = pa.ipc.open_stream(src)
            yield from _column_texts(iter(reader), list(reader.schema.names), str(path), text_field)


def _files_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in FILE_SUFFIXES
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def _file(path: Path, text_field: str) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _txt(path)
    if suffix == ".jsonl":
        return jsonl_documents(path, text_field)
    if suffix == ".parquet":
        return _parquet(path, text_field)
    raise FlashsearchError(f"unsupported data file {path} (extension {path.suffix or 'none'!r}); use "
                           f"{', '.join(FILE_SUFFIXES)} files, a directory of them or a saved Hugging Face dataset")


# ---- sources -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """Where documents come from: `documents()` streams them, in order, every time it is called."""

    description: str
    documents: Callable[[], Iterator[Document]]
    hash_split: bool                               # wikipedia*: held out by title hash, else trailing documents
    identity: dict[str, Any]                       # what a rerun compares to know the input is unchanged


def _stat(paths: list[Path], root: Path) -> list[list[Any]]:
    return [[str(p.relative_to(root)) if p != root else p.name, p.stat().st_size, p.stat().st_mtime_ns]
            for p in paths]


def open_source(spec: str, text_field: str = "text") -> Source:
    """The documents of `spec`: a file, a directory, a saved Hugging Face dataset, or a named corpus."""
    from flashsearch.proxies.quality import corpus as byte_corpus

    path = Path(spec).expanduser()
    if not path.exists():
        if spec.strip().lower() in byte_corpus.CORPORA:
            return _named(byte_corpus.check_corpus(spec))
        raise FlashsearchError(f"input {spec!r} does not exist; give a .txt/.jsonl/.parquet file, a directory of "
                               "them, a saved Hugging Face dataset folder, or a corpus name "
                               f"({', '.join(byte_corpus.CORPORA)})")
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        raise FlashsearchError(f"{path} is a saved DatasetDict; point at one of its splits, e.g. {path / 'train'}")
    if path.is_dir() and (path / HF_STATE).is_file():
        arrows = sorted(path.glob("*.arrow"))
        return Source(str(path), lambda: _saved_dataset(path, text_field), False,
                      {"kind": "hf_dataset", "files": _stat(arrows, path), "text_field": text_field})
    if path.is_dir():
        files = _files_in(path)
        if not files:
            raise FlashsearchError(f"data directory {path} has no {', '.join(FILE_SUFFIXES)} files")
        return Source(str(path), lambda: (d for f in files for d in _file(f, text_field)), False,
                      {"kind": "files", "files": _stat(files, path), "text_field": text_field})
    _file(path, text_field)  # refuses an unknown extension now
    return Source(str(path), lambda: _file(path, text_field), False,
                  {"kind": "files", "files": _stat([path], path), "text_field": text_field})


def _named(name: str) -> Source:
    from flashsearch.proxies.quality import corpus as byte_corpus

    if name.startswith("wikipedia"):
        languages = ("en-us",) if name == "wikipedia_en" else byte_corpus.WIKIPEDIA_LANGUAGES
        description = byte_corpus._wikipedia_source(languages)

        def documents() -> Iterator[Document]:
            for lang, title, doc in byte_corpus.wikipedia_articles(languages):
                yield Document.in_memory(doc, f"{name}:{lang}/{title}", (lang, title))

        return Source(description, documents, True, {"kind": "corpus", "name": name, "source": description})

    def embedded() -> Iterator[Document]:
        for i, doc in enumerate(byte_corpus.embedded_documents()):
            if doc:
                yield Document.in_memory(doc, f"{name}[{i}]")

    return Source(byte_corpus.EMBEDDED_NAME, embedded, False, {"kind": "corpus", "name": name})


# ---- the validation split --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    """Which documents are validation. Built by `plan_split`, one pass over the documents (sizes only)."""

    rule: str                    # hash | trailing | position
    val_fraction: float
    documents: int               # non-empty documents in the source
    bytes: int
    cut: int | None = None       # position rule: the byte of the single document where validation starts

    def is_validation(self, doc: Document, index: int, bytes_through: int) -> bool:
        """Whether document `index` (0-based), whose end is at byte `bytes_through` of the source, is held out."""
        if self.rule == "hash":
            from flashsearch.proxies.quality.corpus import _held_out

            return _held_out(doc.key[0], doc.key[1], self.val_fraction)  # type: ignore[index]
        # Trailing documents: the bytes after this one are fewer than val_fraction of all (corpus.split_documents).
        return index >= 1 and self.bytes - bytes_through < self.val_fraction * self.bytes

    def describe(self) -> str:
        return {"hash": 'articles whose sha256("<language>/<title>") lies in the lowest val_fraction of the range',
                "trailing": "the trailing documents holding at least val_fraction of the bytes",
                "position": "the single document cut at `cut` bytes (moved to the next line break within 1%)"
                }[self.rule]


def _first_newline(doc: Document, lo: int, hi: int) -> int:
    """Position of the first b"\\n" of `doc` in [lo, hi), or -1; reads the document in chunks."""
    pos = 0
    for chunk in doc.read():
        end = pos + len(chunk)
        if end > lo and pos < hi:
            found = chunk.find(b"\n", max(lo - pos, 0), min(hi - pos, len(chunk)))
            if found != -1:
                return pos + found
        if end >= hi:
            break
        pos = end
    return -1


def byte_range(doc: Document, lo: int, hi: int) -> Iterator[bytes]:
    """Bytes [lo, hi) of a document, in chunks."""
    pos = 0
    for chunk in doc.read():
        a, b = max(lo - pos, 0), min(hi - pos, len(chunk))
        if a < b:
            yield chunk[a:b]
        pos += len(chunk)
        if pos >= hi:
            return


def check_utf8(doc: Document) -> None:
    """Refuse a document that is not UTF-8 text (subword tokenizers read characters), in one line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in doc.read():
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise FlashsearchError(f"{doc.where} is not valid UTF-8 ({exc.reason}); a subword tokenizer needs UTF-8 "
                               "text (--tokenizer bytes takes any bytes)") from None


def _char_start(doc: Document, pos: int) -> int:
    """`pos`, moved forward past UTF-8 continuation bytes (10xxxxxx) to where a character starts."""
    head = b"".join(byte_range(doc, pos, pos + 4))
    step = 0
    while step < len(head) and head[step] & 0xC0 == 0x80:
        step += 1
    return pos + step


def plan_split(source: Source, val_fraction: float, char_safe: bool = False) -> Split:
    """Count the documents and bytes (reading text only where sizes need it) and fix the validation split.
    char_safe: every document must be UTF-8 and a single one is never cut inside a character (for subword
    tokenizers, which read characters)."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not math.isfinite(val_fraction) or not 0.0 < val_fraction < 1.0:
        raise FlashsearchError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    n, total, n_val, first = 0, 0, 0, None
    for doc in source.documents():
        first = first or doc
        n, total = n + 1, total + doc.size
        if char_safe:
            check_utf8(doc)
        if source.hash_split:
            from flashsearch.proxies.quality.corpus import _held_out

            n_val += _held_out(doc.key[0], doc.key[1], val_fraction)  # type: ignore[index]
    if n == 0 or first is None:
        raise FlashsearchError(f"{source.description} holds no text (empty files / no non-empty records)")
    if source.hash_split:
        if n_val in (0, n):
            raise FlashsearchError(f"val_fraction={val_fraction} leaves an empty split; use a value like 0.1")
        return Split("hash", val_fraction, n, total)
    if n >= 2:
        return Split("trailing", val_fraction, n, total)
    cut = int(total * (1.0 - val_fraction))
    newline = _first_newline(first, cut, cut + max(1, total // 100))
    cut = newline + 1 if newline != -1 else _char_start(first, cut) if char_safe else cut
    if not 0 < cut < total:
        raise FlashsearchError(f"{source.description} holds {total} bytes: too little text to split into training "
                               "and validation")
    return Split("position", val_fraction, 1, total, cut)


__all__ = ["Document", "Source", "Split", "open_source", "plan_split", "byte_range", "CHUNK", "FILE_SUFFIXES"]
