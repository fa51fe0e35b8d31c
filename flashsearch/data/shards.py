"""Token shards on disk, read lazily: the manifest format, a split seen as one array, seeded windows from it.

A shard folder (written by `flashsearch data prepare`, flashsearch/data/prepare.py) holds:

  manifest.json             what the folder holds (format below); written last, so its presence means complete
  train-00000.bin ...       the training split's token ids, raw little-endian `dtype` (uint16 or uint32), in
                            shards of at most `shard_tokens` ids; documents run on across shard ends
  validation-00000.bin ...  the validation split, likewise
  train-docs.bin, validation-docs.bin
                            [documents, 2] uint64: each document's first and end token offset in its split
  tokenizer.json            the tokenizer (absent for the `bytes` tokenizer)
  token_bytes.npy           [vocab_size] int64: bytes of text each id stands for (readers need no tokenizer)

Within a split the documents follow each other with `separator_ids` (the separator text, "\\n\\n", tokenized)
between them, as the byte corpus joins them, so the ids of a split decode to exactly `bytes` bytes of text.
Nothing is read until it is used: each shard is an np.memmap opened on first access, and an object of this module
pickles as its folder path (a Ray worker reopens the files; no token crosses the wire).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flashsearch.errors import FlashsearchError

FORMAT = "flashsearch-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
TOKEN_BYTES_FILE = "token_bytes.npy"
SPLITS = ("train", "validation")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


def index_name(split: str) -> str:
    return f"{split}-docs.bin"


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a shard folder, checked for format and version; every problem is one line."""
    d = Path(directory).expanduser()
    path = d / MANIFEST
    if not path.is_file():
        why = "does not exist" if not d.exists() else f"has no {MANIFEST} (not prepared, or prepare did not finish)"
        raise FlashsearchError(f"shards folder {str(directory)!r} {why}; make it with `flashsearch data prepare "
                               "INPUT DIR`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FlashsearchError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FlashsearchError(f"{path} is not a flashsearch shard manifest (format {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise FlashsearchError(f"{path} has format version {manifest.get('version')!r}; this flashsearch reads "
                               f"version {VERSION}: prepare the shards again")
    return manifest


class TokenStream:
    """One split's shards seen as one 1-D array of ids, each shard memory-mapped on first access."""

    def __init__(self, directory: Path, entry: dict[str, Any], dtype: np.dtype):
        self.directory, self.dtype = directory, dtype
        self.files = [directory / s["file"] for s in entry["shards"]]
        counts = np.array([int(s["tokens"]) for s in entry["shards"]], dtype=np.int64)
        self._ends = np.cumsum(counts)
        self._starts = self._ends - counts
        self._maps: dict[int, np.ndarray] = {}
        self.index_file = directory / entry["index"]
        self.documents = int(entry["documents"])
        self.bytes = int(entry["bytes"])
        for path, n in zip(self.files, counts):  # sizes only: a truncated shard is caught here, not mid-training
            expect = int(n) * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expect:
                raise FlashsearchError(f"shard {path} is missing or not {expect} bytes as {MANIFEST} says; prepare "
                                       "the shards again")

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _shard(self, i: int) -> np.ndarray:
        m = self._maps.get(i)
        if m is None:  # two threads may both map it: harmless, the dict keeps one
            length = int(self._ends[i] - self._starts[i])
            m = self._maps[i] = np.memmap(self.files[i], dtype=self.dtype, mode="r", shape=(length,))
        return m

    def read(self, start: int, stop: int) -> np.ndarray:
        """ids[start:stop] (a copy), across shard ends."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"[{start}:{stop}] outside a split of {len(self)} tokens")
        out = np.empty(stop - start, dtype=self.dtype)
        i, pos = int(np.searchsorted(self._ends, start, side="right")), start
        while pos < stop:
            take = min(stop, int(self._ends[i])) - pos
            offset = pos - int(self._starts[i])
            out[pos - start:pos - start + take] = self._shard(i)[offset:offset + take]
            pos, i = pos + take, i + 1
        return out

    def windows(self, starts: Any, length: int) -> torch.Tensor:
        """[len(starts), length] int64 windows ids[s:s+length]."""
        rows = [self.read(int(s), int(s) + length) for s in starts]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def document_spans(self) -> np.ndarray:
        """[documents, 2] (first, end) token offsets of each document (memory-mapped)."""
        if self.documents == 0:
            return np.zeros((0, 2), dtype=np.uint64)
        return np.memmap(self.index_file, dtype=np.uint64, mode="r", shape=(self.documents, 2))


class TokenShards:
    """A prepared shard folder: its manifest, its two splits (lazy), its tokenizer and the bytes per token."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser().resolve()
        self.manifest = read_manifest(self.directory)
        m = self.manifest
        self.dtype = np.dtype(m["dtype"])
        self.vocab_size = int(m["tokenizer"]["vocab_size"])
        self.fingerprint = str(m["fingerprint"])
        self.train = TokenStream(self.directory, m["splits"]["train"], self.dtype)
        self.validation = TokenStream(self.directory, m["splits"]["validation"], self.dtype)
        self.source = f"shards:{self.directory} ({m['source']}; tokenizer {m['tokenizer']['name']})"
        self._lock = threading.Lock()
        self._token_bytes: torch.Tensor | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (TokenShards, (str(self.directory),))

    def __repr__(self) -> str:
        return (f"TokenShards({str(self.directory)!r}, vocab={self.vocab_size}, train={len(self.train)} tokens, "
                f"validation={len(self.validation)} tokens)")

    def tokenizer(self) -> Any:
        from flashsearch.data.tokenizer import BYTE_TOKENIZER, from_file

        file = self.manifest["tokenizer"].get("file")
        tok = BYTE_TOKENIZER if file is None else from_file(self.directory / file)
        if tok.fingerprint != self.manifest["tokenizer"]["fingerprint"]:
            raise FlashsearchError(f"{self.directory / (file or MANIFEST)} is not the tokenizer the shards were "
                                   "made with; prepare the shards again")
        return tok

    def token_bytes(self) -> torch.Tensor:
        """[vocab_size] int64: bytes of text each id stands for (the denominator of bits per byte)."""
        with self._lock:
            if self._token_bytes is None:
                path = self.directory / str(self.manifest["tokenizer"].get("token_bytes"))
                try:
                    table = np.load(path, allow_pickle=False)
                except (OSError, ValueError) as exc:
                    raise FlashsearchError(f"cannot read {path} ({exc}); prepare the shards again") from None
                if table.shape != (self.vocab_size,):
                    raise FlashsearchError(f"{path} holds {table.shape} values, not one per id of the "
                                           f"{self.vocab_size}; prepare the shards again")
                self._token_bytes = torch.from_numpy(table.astype(np.int64))
            return self._token_bytes


def _check_length(n: int, seq_len: int, what: str) -> None:
    if n < seq_len + 1:
        raise FlashsearchError(f"the {what} split has {n} tokens, fewer than seq_len+1={seq_len + 1}; give more "
                               "data or a shorter seq_len")


class ShardSampler:
    """Random training windows [batch, seq_len+1] (int64 ids) from a split, drawn like corpus.WindowSampler.

    The generator draws the whole global batch on every worker; worker `rank` of `world_size` keeps its
    contiguous 1/world_size of the rows, so a seed gives the same global batches on 1 or N workers.
    """

    def __init__(self, stream: TokenStream, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        _check_length(len(stream), seq_len, "training")
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise FlashsearchError(f"batch_size={batch_size} must split evenly over {world_size} workers "
                                   f"(rank {rank})")
        self.stream, self.batch_size, self.seq_len = stream, int(batch_size), int(seq_len)
        self.rows = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self.generator = torch.Generator().manual_seed(int(seed))

    def sample(self) -> torch.Tensor:  # [B / world_size, T+1] int64
        starts = torch.randint(0, len(self.stream) - self.seq_len, (self.batch_size, 1), generator=self.generator)
        return self.stream.windows(starts[self.rows, 0].tolist(), self.seq_len + 1)

    def __iter__(self) -> "ShardSampler":
        return self

    def __next__(self) -> torch.Tensor:
        return self.sample()


def validation_windows(stream: TokenStream, seq_len: int, n_windows: int) -> torch.Tensor:
    """The fixed evaluation set [n, seq_len+1]: up to n_windows windows evenly spaced over the validation split,
    placed as corpus.validation_windows places them on bytes."""
    _check_length(len(stream), seq_len, "validation")
    last_start = len(stream) - (seq_len + 1)
    n = max(1, min(int(n_windows), last_start + 1))
    starts = torch.linspace(0, last_start, n).round().long().unique()
    return stream.windows(starts.tolist(), seq_len + 1)


__all__ = ["TokenShards", "TokenStream", "ShardSampler", "validation_windows", "read_manifest", "MANIFEST",
           "TOKEN_BYTES_FILE", "FORMAT", "VERSION", "shard_name", "index_name"]
