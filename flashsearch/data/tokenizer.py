"""The tokenizers text becomes token ids with, and how many bytes of text each token stands for.

- `bytes`: the 256 byte values, id = byte (what the byte corpus trains on; no `tokenizers` needed).
- `bpe`: our byte-level BPE (Hugging Face `tokenizers`), trained once on the default corpus's training split
  (proxies/quality/corpus.py) with BPE_VOCAB ids; deterministic, and cached per machine at
  cache_dir()/tokenizers/<key>/tokenizer.json, the key hashing the corpus's training bytes and the settings.
- a path: the user's tokenizer.json, or a folder holding one (a Hugging Face tokenizer folder).

Scores stay bits per byte of text whatever the tokenizer: `token_bytes()` gives the UTF-8 bytes each id decodes
to. Exact for `bytes`, `bpe` and any byte-level tokenizer (its vocabulary spells bytes, so decode(encode(text)) is
the text); for other tokenizers (SentencePiece-style, word-level) it is the length of the id decoded after a
one-letter id, approximate where normalizers change the text or a prefix space is added to it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from flashsearch.errors import FlashsearchError

BYTES = "bytes"
BPE = "bpe"
BPE_VOCAB = 4096                 # ~3.1 bytes per token on the default corpus (8192: ~3.6), trains in ~10 s
BPE_MIN_FREQUENCY = 2
BPE_SPLIT = 0.1                  # the tokenizer learns from the default corpus's training split at this val_fraction
BPE_RECIPE = 1                   # bump when the training recipe below changes: old cache entries stop matching
TOKENIZER_FILE = "tokenizer.json"


def cache_dir() -> Path:
    """Per-user cache: $FLASHSEARCH_CACHE_DIR, else $XDG_CACHE_HOME/flashsearch, else ~/.cache/flashsearch."""
    env = os.environ.get("FLASHSEARCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "flashsearch"


def _byte_decoder() -> dict[str, int]:
    """The byte-level alphabet (GPT-2's): each byte is spelled by one printable character; char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return {chr(c): b for b, c in chars.items()}


BYTE_DECODER = _byte_decoder()
_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _is_byte_level(spec: dict[str, Any]) -> bool:
    """Whether a tokenizer.json spells bytes with the byte-level alphabet (its decoder or pre-tokenizer says so)."""
    def has(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(has(v) for v in node.values())
        if isinstance(node, list):
            return any(has(v) for v in node)
        return False

    return has(spec.get("decoder")) or has(spec.get("pre_tokenizer"))


@dataclass(frozen=True, eq=False)
class Tokenizer:
    """Text bytes -> ids and ids -> bytes. `hf` is the Hugging Face tokenizer (None for `bytes`)."""

    name: str                  # bytes, bpe-<vocab> or the file it was read from
    fingerprint: str           # sha256 of what defines the mapping (the tokenizer.json text)
    vocab_size: int
    hf: Any = None
    byte_level: bool = True    # token_bytes() is exact

    def encode(self, texts: Sequence[bytes]) -> list[np.ndarray]:
        """Ids of each text (uint32 arrays). Raises UnicodeDecodeError when a subword tokenizer gets non-UTF-8."""
        if self.hf is None:
            return [np.frombuffer(t, dtype=np.uint8).astype(np.uint32) for t in texts]
        strings = [t.decode("utf-8") for t in texts]
        return [np.asarray(e.ids, dtype=np.uint32) for e in self.hf.encode_batch(strings, add_special_tokens=False)]

    @functools.cached_property
    def pieces(self) -> tuple[bytes, ...]:
        """The bytes each id stands for (see the module doc for when that is exact)."""
        if self.hf is None:
            return tuple(bytes([b]) for b in range(256))
        out = [b""] * self.vocab_size
        added = dict(self.hf.get_added_tokens_decoder())
        # Other tokenizers: an id is decoded after an anchor id (one that decodes to "a"), so decoders that strip
        # the leading space of a text (SentencePiece's "▁the" -> "the") keep the space this id stands for.
        anchor = next((i for i in self.hf.encode("a", add_special_tokens=False).ids[:1]
                       if self.hf.decode([i]) == "a"), None)
        for token, i in self.hf.get_vocab(with_added_tokens=True).items():
            if i in added:        # added tokens are stored as plain text; special ones stand for no text
                out[i] = b"" if added[i].special else added[i].content.encode("utf-8")
            elif self.byte_level and all(c in BYTE_DECODER for c in token):
                out[i] = bytes(BYTE_DECODER[c] for c in token)
            elif _BYTE_FALLBACK.fullmatch(token):   # SentencePiece's byte fallback: <0xE3> is one byte
                out[i] = bytes([int(token[3:5], 16)])
            elif anchor is not None:
                out[i] = self.hf.decode([anchor, i], skip_special_tokens=False).encode("utf-8")[1:]
            else:
                out[i] = self.hf.decode([i], skip_special_tokens=False).encode("utf-8")
        return tuple(out)

    def token_bytes(self) -> np.ndarray:
        """[vocab_size] int64: UTF-8 bytes of text per id, the denominator of bits per byte."""
        return np.array([len(p) for p in self.pieces], dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> bytes:
        """The text of `ids`: exact for byte-level tokenizers; others decode as their own decoder does."""
        if self.hf is not None and not self.byte_level:
            return self.hf.decode([int(i) for i in ids], skip_special_tokens=False).encode("utf-8")
        pieces = self.pieces
        return b"".join(pieces[int(i)] for i in ids)


BYTE_TOKENIZER = Tokenizer(name=BYTES, fingerprint=hashlib.sha256(b"flashsearch bytes tokenizer v1").hexdigest(),
                           vocab_size=256)


def _from_json_text(text: str, name: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_str(text)
    spec = json.loads(text)
    return Tokenizer(name=name, fingerprint=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                     vocab_size=hf.get_vocab_size(with_added_tokens=True), hf=hf, byte_level=_is_byte_level(spec))


def from_file(path: str | os.PathLike) -> Tokenizer:
    """A user's tokenizer.json, or a Hugging Face tokenizer folder holding one; every problem is one line."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / TOKENIZER_FILE).is_file():
            raise FlashsearchError(f"tokenizer folder {p} has no {TOKENIZER_FILE}; save a fast tokenizer there "
                                   "(tokenizer.save_pretrained) or give bytes, bpe or a tokenizer.json file")
        p = p / TOKENIZER_FILE
    elif not p.is_file():
        raise FlashsearchError(f"tokenizer {str(path)!r} is neither bytes, bpe, a tokenizer.json file nor a folder "
                               "holding one")
    try:
        text = p.read_text(encoding="utf-8")
        tok = _from_json_text(text, str(p))
    except Exception as exc:  # OSError, bad UTF-8 or JSON, and tokenizers' own plain Exception
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlashsearchError(f"cannot read tokenizer {p}: {reason}") from None
    if tok.vocab_size < 1:
        raise FlashsearchError(f"tokenizer {p} has an empty vocabulary")
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int = BPE_VOCAB, min_frequency: int = BPE_MIN_FREQUENCY) -> str:
    """A byte-level BPE trained on `texts`, as tokenizer.json text. Deterministic for the same texts."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    hf.train_from_iterator(texts, trainer=trainer)
    return hf.to_str()


def cached_bpe(corpus_name: str, corpus_fingerprint: str, texts: Callable[[], Iterable[str]],
               vocab_size: int = BPE_VOCAB, min_frequency: int = BPE_MIN_FREQUENCY,
               progress: Callable[[str], None] | None = None) -> Tokenizer:
    """Our BPE trained on `texts()` (called only on a cache miss), cached under cache_dir() by a key of the corpus
    and the settings; written atomically, so an interrupted training leaves no cache entry."""
    import tokenizers

    from flashsearch.atomic import write_text_atomic

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 256:
        raise FlashsearchError(f"the bpe tokenizer's vocab size must be an integer > 256, got {vocab_size!r}")
    settings = {"corpus": corpus_name, "corpus_sha256": corpus_fingerprint, "vocab_size": vocab_size,
                "min_frequency": min_frequency, "recipe": BPE_RECIPE, "tokenizers": tokenizers.__version__}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "tokenizers" / f"bpe-{vocab_size}-{key}" / TOKENIZER_FILE
    name = f"{BPE}-{vocab_size}"
    if path.is_file():
        try:
            return _from_json_text(path.read_text(encoding="utf-8"), name)
        except Exception:  # a damaged cache entry is retrained, never trusted
            pass
    if progress is not None:
        progress(f"training our {name} tokenizer on {corpus_name} (once per machine; cached in {path.parent})")
    text = train_bpe(texts(), vocab_size, min_frequency)
    write_text_atomic(path, text)
    write_text_atomic(path.with_name("settings.json"), json.dumps(settings, indent=1, sort_keys=True) + "\n")
    return _from_json_text(text, name)


def default_bpe(vocab_size: int = BPE_VOCAB, progress: Callable[[str], None] | None = None) -> Tokenizer:
    """Our BPE, trained on the default corpus's training split (first use: ~10 s and a cache entry)."""
    from flashsearch.proxies.quality.corpus import DEFAULT_CORPUS, DOC_SEPARATOR, load_corpus

    train = load_corpus(corpus=DEFAULT_CORPUS, val_fraction=BPE_SPLIT).train.numpy().tobytes()
    return cached_bpe(DEFAULT_CORPUS, hashlib.sha256(train).hexdigest(),
                      lambda: (d.decode("utf-8") for d in train.split(DOC_SEPARATOR)), vocab_size,
                      progress=progress)


def load_tokenizer(spec: str | os.PathLike | None, progress: Callable[[str], None] | None = None) -> Tokenizer:
    """`bytes` (or None), `bpe`, `bpe:<vocab>`, or a path to a tokenizer.json / Hugging Face tokenizer folder.
    progress: told when our BPE has to be trained."""
    if spec is None or str(spec).strip().lower() == BYTES:
        return BYTE_TOKENIZER
    text = str(spec).strip()
    if text.lower() == BPE:
        return default_bpe(progress=progress)
    if text.lower().startswith(BPE + ":"):
        size = text.split(":", 1)[1]
        if not size.isdigit():
            raise FlashsearchError(f"tokenizer {text!r}: write bpe:<vocab size>, e.g. bpe:8192")
        return default_bpe(int(size), progress)
    return from_file(text)


def id_dtype(vocab_size: int, requested: str = "auto") -> np.dtype:
    """The on-disk id type: uint16 when every id fits (vocab <= 65535), else uint32; `requested` forces one."""
    if requested == "auto":
        return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)
    if requested not in ("uint16", "uint32"):
        raise FlashsearchError(f"id type {requested!r}: choose auto, uint16 or uint32")
    dtype = np.dtype(requested)
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise FlashsearchError(f"the tokenizer's vocabulary ({vocab_size} ids) does not fit {requested} "
                               f"(max id {np.iinfo(dtype).max}); use --dtype uint32 or auto")
    return dtype


__all__ = ["Tokenizer", "BYTE_TOKENIZER", "load_tokenizer", "from_file", "default_bpe", "cached_bpe", "train_bpe",
           "cache_dir", "id_dtype", "BPE_VOCAB", "BYTES", "BPE", "TOKENIZER_FILE"]
