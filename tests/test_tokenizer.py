"""Tokenizers (flashsearch/data/tokenizer.py): our byte-level BPE is deterministic, cached by corpus and settings
and never half-written; a user's tokenizer.json or tokenizer folder loads; bad ones are one line; every id knows
the bytes of text it stands for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flashsearch.data import tokenizer as tk
from flashsearch.errors import FlashsearchError

TEXT = ("Tokenizers turn text into ids.\nLes données d'entraînement: naïve façade, œuvre.\n"
        "日本語のテキスト 🙂 and tabs\tand  double  spaces.\n\n") * 40


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLASHSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def texts() -> list[str]:
    from pydoc_data import topics

    return [topics.topics[k] for k in sorted(topics.topics)[:40]] + [TEXT]


def test_byte_alphabet_is_the_byte_level_one() -> None:
    from tokenizers import pre_tokenizers

    assert set(tk.BYTE_DECODER) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(tk.BYTE_DECODER.values()) == list(range(256))
    assert tk.BYTE_DECODER["Ġ"] == ord(" ") and tk.BYTE_DECODER["Ċ"] == ord("\n")


def test_training_is_deterministic_and_decodes_exactly() -> None:
    a = tk.train_bpe(texts(), vocab_size=400)
    assert tk.train_bpe(texts(), vocab_size=400) == a
    assert tk.train_bpe(texts(), vocab_size=500) != a
    tok = tk._from_json_text(a, "test")
    assert tok.vocab_size == 400 and tok.byte_level
    data = TEXT.encode()
    ids = tok.encode([data])[0]
    assert len(ids) < 0.9 * len(data)                    # merges learned: fewer ids than bytes
    assert tok.decode(ids) == data                       # byte-level: exact, multi-byte characters included
    assert int(tok.token_bytes()[ids].sum()) == len(data)


def test_the_cache_is_keyed_by_corpus_and_settings(private_cache: Path) -> None:
    calls = []

    def source() -> list[str]:
        calls.append(1)
        return texts()

    said: list[str] = []
    first = tk.cached_bpe("toy", "sha-a", source, vocab_size=400, progress=said.append)
    again = tk.cached_bpe("toy", "sha-a", source, vocab_size=400, progress=said.append)
    assert len(calls) == 1 and again.fingerprint == first.fingerprint     # a hit trains nothing ...
    assert len(said) == 1 and said[0].startswith("training our bpe-400 tokenizer on toy")  # ... and says nothing
    assert len(list(private_cache.glob("tokenizers/*/tokenizer.json"))) == 1
    tk.cached_bpe("toy", "sha-b", source, vocab_size=400)                 # another corpus: another entry
    tk.cached_bpe("toy", "sha-a", source, vocab_size=420)                 # other settings: another entry
    assert len(calls) == 3 and len(list(private_cache.glob("tokenizers/*/tokenizer.json"))) == 3
    entry = next(p for p in private_cache.glob("tokenizers/bpe-400-*/tokenizer.json")
                 if json.loads(p.with_name("settings.json").read_text())["corpus_sha256"] == "sha-a")
    entry.write_text("{ damaged")                                          # a damaged entry is retrained
    assert tk.cached_bpe("toy", "sha-a", source, vocab_size=400).fingerprint == first.fingerprint
    assert len(calls) == 4


def test_an_interrupted_training_leaves_no_cache_entry(private_cache: Path) -> None:
    def interrupted() -> object:
        yield from texts()[:5]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tk.cached_bpe("toy", "sha-a", interrupted, vocab_size=400)
    assert not [p for p in private_cache.rglob("*") if p.is_file()]


def test_a_user_tokenizer_file_or_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my_tokenizer"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(tk.train_bpe(texts(), vocab_size=300))
    by_file = tk.load_tokenizer(str(folder / "tokenizer.json"))
    by_folder = tk.load_tokenizer(str(folder))
    assert by_file.fingerprint == by_folder.fingerprint and by_file.vocab_size == 300
    assert np.array_equal(by_file.encode([TEXT.encode()])[0],
                          by_file.hf.encode(TEXT, add_special_tokens=False).ids)
    assert tk.load_tokenizer("bytes") is tk.BYTE_TOKENIZER and tk.load_tokenizer(None) is tk.BYTE_TOKENIZER


def test_a_word_level_tokenizer_counts_the_bytes_of_each_word(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf = Tokenizer(models.WordLevel({"[UNK]": 0, "héllo": 1, "world": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = tk.load_tokenizer(str(tmp_path))
    assert not tok.byte_level
    assert tok.token_bytes()[1:].tolist() == [len("héllo".encode()), 5]


def test_a_sentencepiece_style_tokenizer_keeps_the_spaces_its_ids_stand_for(tmp_path: Path) -> None:
    """"▁the" decodes to "the" alone (the decoder strips a leading space) but stands for " the" within a text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    hf.train_from_iterator(texts(), trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"],
                                                        show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = tk.load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert not tok.byte_level
    text = "the cat sat on the mat and the dog sat on the log"
    ids = tok.encode([text.encode()])[0]
    assert len(ids) < len(text)
    # Every byte of the text, plus the one space Metaspace puts before the first word.
    assert int(tok.token_bytes()[ids].sum()) == len(text) + 1
    assert tok.decode(ids) == text.encode()


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.json", "is neither bytes, bpe, a tokenizer.json"),
    (lambda d: d, "has no tokenizer.json"),
    (lambda d: (d / "tokenizer.json").write_text("{not json") and d / "tokenizer.json", "cannot read tokenizer"),
    (lambda d: (d / "tokenizer.json").write_text('{"model": 3}') and d, "cannot read tokenizer"),
])
def test_a_missing_or_unreadable_tokenizer_is_one_line(tmp_path: Path, make, needle: str) -> None:
    with pytest.raises(FlashsearchError, match=needle) as info:
        tk.load_tokenizer(str(make(tmp_path)))
    assert "\n" not in str(info.value)


def test_id_types() -> None:
    assert tk.id_dtype(4096) == np.uint16 and tk.id_dtype(65535) == np.uint16
    assert tk.id_dtype(65536) == np.uint32 and tk.id_dtype(300, "uint32") == np.uint32
    with pytest.raises(FlashsearchError, match="does not fit uint16"):
        tk.id_dtype(70_000, "uint16")


@pytest.mark.slow
def test_our_bpe_learns_the_default_corpus_once() -> None:
    """The real thing: ~10 s of training on the default corpus's training split, then a cache hit."""
    import time

    from flashsearch.proxies.quality.corpus import load_corpus

    tok = tk.load_tokenizer("bpe")
    assert tok.vocab_size == tk.BPE_VOCAB and tok.name == f"bpe-{tk.BPE_VOCAB}"
    t0 = time.perf_counter()
    assert tk.load_tokenizer("bpe").fingerprint == tok.fingerprint and time.perf_counter() - t0 < 5
    val = load_corpus().validation.numpy().tobytes()[:200_000]
    val = val[:len(val.decode("utf-8", "ignore").encode())]
    ids = tok.encode([val])[0]
    assert tok.decode(ids) == val and len(val) / len(ids) > 2.5      # held-out text: > 2.5 bytes per token
