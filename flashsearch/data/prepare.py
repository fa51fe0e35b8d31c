"""`flashsearch data prepare`: documents -> token shards + manifest.json, streaming and crash-safe.

Two passes over the input, each holding one chunk / line / record batch (plus one batch of text being
tokenized, ENCODE_BYTES) in memory whatever the corpus size: the first counts documents and bytes and fixes the
validation split (sources.plan_split, the byte corpus's rules); the second tokenizes and appends ids to the open
shard of each split, a new shard every `shard_tokens` ids (as nanoGPT's FineWeb preparation does).

Crash safety: the old manifest is removed before anything else is touched; shards and document indexes are
written under temporary names, fsync'ed, renamed into place, and the manifest is written last, atomically. An
interrupted prepare therefore leaves no manifest (readers refuse the folder), never one that points at
half-written shards; running it again starts over and completes. A folder whose manifest records the same
request (input files with sizes and times, tokenizer, settings) is left as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from flashsearch.errors import FlashsearchError

from .shards import FORMAT, MANIFEST, SPLITS, TOKEN_BYTES_FILE, VERSION, index_name, read_manifest, shard_name
from .sources import Document, Source, Split, byte_range, open_source, plan_split
from .tokenizer import TOKENIZER_FILE, Tokenizer, cache_dir, id_dtype, load_tokenizer

SEPARATOR = b"\n\n"              # between documents, as the byte corpus joins them (corpus.DOC_SEPARATOR)
ENCODE_BYTES = 1 << 20           # text tokenized in one encode_batch call
LONG_PIECE = 4 << 20             # a piece with no line break this long is cut at a character boundary
LOCK_FILE = ".prepare.lock"


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of one prepare; the request a manifest records is these plus the input and the tokenizer."""

    text_field: str = "text"             # the JSONL field / parquet column holding the text
    shard_tokens: int = 100_000_000      # ids per shard file (nanoGPT's FineWeb shards: 1e8 tokens)
    val_fraction: float = 0.1            # the byte corpus's default
    dtype: str = "auto"                  # auto (uint16 when the vocabulary fits, else uint32), uint16, uint32

    def __post_init__(self) -> None:
        if not isinstance(self.text_field, str) or not self.text_field:
            raise FlashsearchError(f"--text-field must be a non-empty string, got {self.text_field!r}")
        if isinstance(self.shard_tokens, bool) or not isinstance(self.shard_tokens, int) or self.shard_tokens < 1:
            raise FlashsearchError(f"--shard-tokens must be a positive integer, got {self.shard_tokens!r}")
        if self.dtype not in ("auto", "uint16", "uint32"):
            raise FlashsearchError(f"--dtype must be auto, uint16 or uint32, got {self.dtype!r}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SplitWriter:
    """Appends one split's documents to shard files under temporary names; `commit` renames them into place."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int, separator: np.ndarray):
        self.directory, self.split, self.dtype = directory, split, dtype
        self.shard_tokens, self.separator = shard_tokens, separator.astype(dtype)
        self.shards: list[int] = []          # ids in each shard, the last one open
        self.tokens = self.documents = self.bytes = 0
        self._file: Any = None
        self._index = open(self._tmp(index_name(split)), "wb")

    def _tmp(self, name: str) -> Path:
        return self.directory / f".{name}.tmp"

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def _write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._file is None or self.shards[-1] == self.shard_tokens:
                self._close_shard()
                self.shards.append(0)
                self._file = open(self._tmp(shard_name(self.split, len(self.shards) - 1)), "wb")
            take = min(len(ids), self.shard_tokens - self.shards[-1])
            self._file.write(ids[:take].tobytes())
            self.shards[-1] += take
            self.tokens += take
            ids = ids[take:]

    def begin_document(self) -> None:
        if self.documents:
            self._write(self.separator)
            self.bytes += len(SEPARATOR)
        self._first = self.tokens

    def append(self, ids: np.ndarray, n_bytes: int) -> None:
        self._write(ids.astype(self.dtype, copy=False))
        self.bytes += n_bytes

    def end_document(self) -> None:
        self._index.write(np.array([self._first, self.tokens], dtype=np.uint64).tobytes())
        self.documents += 1

    def finish(self) -> dict[str, Any]:
        """Close and fsync everything; the split's manifest entry."""
        self._close_shard()
        self._index.flush()
        os.fsync(self._index.fileno())
        self._index.close()
        return {"documents": self.documents, "tokens": self.tokens, "bytes": self.bytes, "index": index_name(
            self.split), "shards": [{"file": shard_name(self.split, i), "tokens": n} for i, n in
                                    enumerate(self.shards)]}

    def commit(self) -> None:
        for name in [shard_name(self.split, i) for i in range(len(self.shards))] + [index_name(self.split)]:
            os.replace(self._tmp(name), self.directory / name)

    def abort(self) -> None:
        self._close_shard()
        self._index.close()


def _pieces(doc: Document, subword: bool) -> Iterator[bytes]:
    """The document's text in pieces a tokenizer can take one at a time: for subword tokenizers each piece ends
    at a line break, or at a character boundary when a line is very long (pass one checked the text is UTF-8)."""
    if not subword:
        yield from doc.read()
        return
    carry = b""
    for chunk in doc.read():
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) >= LONG_PIECE:
            cut = _char_boundary(data)
        piece, carry = data[:cut], data[cut:]
        if piece:
            yield piece
    if carry:
        yield carry


def _char_boundary(data: bytes) -> int:
    """len(data), moved back before a UTF-8 character that the end of `data` cuts in two."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:                      # ASCII: nothing is cut
            break
        if byte >= 0xC0:                     # the lead byte of the last character: 2, 3 or 4 bytes long
            if back < (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4):
                return len(data) - back
            break
    return len(data)


class _Encoder:
    """Queues (split, event, text) and tokenizes the text in batches of about ENCODE_BYTES, in order."""

    def __init__(self, tokenizer: Tokenizer, writers: dict[str, SplitWriter]):
        self.tokenizer, self.writers = tokenizer, writers
        self.queue: list[tuple[str, str, bytes]] = []
        self.queued = 0

    def put(self, split: str, event: str, text: bytes = b"") -> None:
        self.queue.append((split, event, text))
        self.queued += len(text)
        if self.queued >= ENCODE_BYTES:
            self.flush()

    def flush(self) -> None:
        ids = iter(self.tokenizer.encode([t for _, e, t in self.queue if e == "text"]))
        for split, event, text in self.queue:
            w = self.writers[split]
            if event == "begin":
                w.begin_document()
            elif event == "end":
                w.end_document()
            else:
                w.append(next(ids), len(text))
        self.queue, self.queued = [], 0


def _feed(source: Source, split: Split, enc: _Encoder, subword: bool) -> None:
    """Pass two: every document's pieces, queued to its split."""
    through = 0
    for index, doc in enumerate(source.documents()):
        through += doc.size
        if split.rule == "position":      # one document, cut into a training and a validation document
            _feed_cut(doc, split.cut or 0, enc, subword)
            continue
        name = "validation" if split.is_validation(doc, index, through) else "train"
        enc.put(name, "begin")
        for piece in _pieces(doc, subword):
            enc.put(name, "text", piece)
        enc.put(name, "end")


def _feed_cut(doc: Document, cut: int, enc: _Encoder, subword: bool) -> None:
    def part(lo: int, hi: int) -> Document:
        return Document(hi - lo, lambda: byte_range(doc, lo, hi), doc.where)

    for name, piece_doc in (("train", part(0, cut)), ("validation", part(cut, doc.size))):
        enc.put(name, "begin")
        for piece in _pieces(piece_doc, subword):
            enc.put(name, "text", piece)
        enc.put(name, "end")


def _request(source: Source, tokenizer: Tokenizer, config: PrepareConfig) -> dict[str, Any]:
    return {"input": source.identity, "tokenizer": tokenizer.fingerprint, **dataclasses.asdict(config)}


def _up_to_date(out: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The folder's manifest when it records this request and its files are whole, else None."""
    if not (out / MANIFEST).is_file():
        return None
    try:
        from .shards import TokenShards

        manifest = read_manifest(out)
        if manifest.get("request") != request:
            return None
        TokenShards(out).token_bytes()  # checks every shard's size and the bytes-per-id table
        return manifest
    except FlashsearchError:
        return None


def _clear(out: Path) -> None:
    """Remove the manifest first (from now on no reader trusts the folder), then what a previous prepare left."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out / MANIFEST)
        _fsync_dir(out)
    for split in SPLITS:
        for f in [*out.glob(f"{split}-*.bin"), *out.glob(f".{split}-*.bin.tmp")]:
            f.unlink()
    for f in (out / TOKENIZER_FILE, out / TOKEN_BYTES_FILE, *out.glob(f".{MANIFEST}.*.tmp"),
              *out.glob(f".{TOKENIZER_FILE}.*.tmp"), *out.glob(f".{TOKEN_BYTES_FILE}.*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One prepare per folder at a time (Ray workers preparing the same cached shards wait for the first)."""
    import fcntl

    with open(out / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _plan(source: Source, config: PrepareConfig, say: Callable[[str], None], subword: bool) -> Split:
    """Pass one: documents, bytes and the validation split."""
    split = plan_split(source, config.val_fraction, char_safe=subword)
    say(f"{source.description}: {split.documents} documents, {split.bytes} bytes; validation: {split.rule} split "
        f"at {config.val_fraction}")
    return split


def prepare(input_spec: str, out_dir: str | os.PathLike, tokenizer: Tokenizer | str | None = None,
            config: PrepareConfig | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Tokenize `input_spec` (sources.open_source) into shards in `out_dir`; return the manifest.

    Up to date (same request, whole files): nothing is rewritten. Bad input is one FlashsearchError line, raised
    before any file is written."""
    config = config or PrepareConfig()
    say = progress or (lambda _msg: None)
    source = open_source(input_spec, config.text_field)     # cheap checks first: a typo fails before any training
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FlashsearchError(f"output {out} exists and is not a directory")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer, say)
    dtype = id_dtype(tok.vocab_size, config.dtype)
    request = _request(source, tok, config)
    subword = tok.hf is not None
    split = None if _up_to_date(out, request) else _plan(source, config, say, subword)  # bad input: nothing written
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        done = _up_to_date(out, request)  # again: another process may have prepared it meanwhile
        if done is not None:
            say(f"{out}: already prepared from the same input, tokenizer and settings; nothing to do")
            return done
        return _write_folder(out, source, split or _plan(source, config, say, subword), tok, dtype, config, request,
                             say)


def _write_folder(out: Path, source: Source, split: Split, tok: Tokenizer, dtype: np.dtype, config: PrepareConfig,
                  request: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """Pass two, under the folder's lock: clear the folder, write the shards, then the manifest."""
    subword = tok.hf is not None
    _clear(out)
    separator = tok.encode([SEPARATOR])[0]
    writers = {s: SplitWriter(out, s, dtype, config.shard_tokens, separator) for s in SPLITS}
    try:
        enc = _Encoder(tok, writers)
        _feed(source, split, enc, subword)  # pass two
        enc.flush()
        entries = {s: w.finish() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for name, entry in entries.items():
        if entry["tokens"] == 0:
            raise FlashsearchError(f"the {name} split of {source.description} holds no tokens; give more text")
    tok_file = None
    if tok.hf is not None:
        from flashsearch.atomic import write_text_atomic

        write_text_atomic(out / TOKENIZER_FILE, tok.hf.to_str())
        tok_file = TOKENIZER_FILE
    _write_token_bytes(out / TOKEN_BYTES_FILE, tok.token_bytes())
    for w in writers.values():
        w.commit()
    _fsync_dir(out)
    manifest = _manifest(source, split, tok, tok_file, dtype, config, separator, entries, request)
    _write_manifest(out, manifest)
    say(f"{out}: {manifest['tokens']} tokens ({entries['train']['tokens']} train, "
        f"{entries['validation']['tokens']} validation) in "
        f"{sum(len(e['shards']) for e in entries.values())} shards, {manifest['bytes_per_token']:.2f} bytes "
        "per token")
    return manifest


def _manifest(source: Source, split: Split, tok: Tokenizer, tok_file: str | None, dtype: np.dtype,
              config: PrepareConfig, separator: np.ndarray, entries: dict[str, Any], request: dict[str, Any]
              ) -> dict[str, Any]:
    tokens = sum(e["tokens"] for e in entries.values())
    n_bytes = sum(e["bytes"] for e in entries.values())
    body: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "created_by": "flashsearch data prepare",
        "source": source.description,
        "tokenizer": {"name": tok.name, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size,
                      "file": tok_file, "byte_level": tok.byte_level, "token_bytes": TOKEN_BYTES_FILE},
        "dtype": dtype.name, "shard_tokens": config.shard_tokens,
        "separator": SEPARATOR.decode(), "separator_ids": [int(i) for i in separator],
        "validation": {"rule": split.rule, "val_fraction": config.val_fraction, "cut": split.cut,
                       "description": split.describe()},
        "documents": split.documents, "tokens": tokens, "bytes": n_bytes,
        "bytes_per_token": n_bytes / max(tokens, 1),
        "splits": entries, "request": request,
    }
    body["fingerprint"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return body


def _write_token_bytes(path: Path, token_bytes: np.ndarray) -> None:
    """Bytes of text per id, computed once here so that readers need no tokenizer (.npy: data, not a pickle)."""
    from flashsearch.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, token_bytes.astype(np.int64), allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    from flashsearch.atomic import atomic_path

    with atomic_path(out / MANIFEST) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(manifest, indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    _fsync_dir(out)


def cached_shards(input_spec: str, tokenizer: str, text_field: str = "text", val_fraction: float = 0.1,
                  progress: Callable[[str], None] | None = None) -> Path:
    """Shards of `input_spec` under `tokenizer` in the per-user cache (cache_dir()/shards/<key>), prepared on
    first use, so that proxies and their workers never tokenize the same text twice."""
    tok = load_tokenizer(tokenizer, progress)
    config = PrepareConfig(text_field=text_field, val_fraction=val_fraction)
    request = _request(open_source(input_spec, text_field), tok, config)
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    out = cache_dir() / "shards" / f"{tok.name.rsplit('/', 1)[-1]}-{key}"
    if _up_to_date(out, request) is None:  # a cache hit says nothing (every run and worker reads it)
        prepare(input_spec, out, tok, config, progress)
    return out


__all__ = ["prepare", "cached_shards", "PrepareConfig", "SplitWriter", "SEPARATOR"]
