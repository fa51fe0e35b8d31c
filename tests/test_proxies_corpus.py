"""Byte corpus: embedded split, user loaders and their errors, window sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flashsearch.errors import FlashsearchError
from flashsearch.proxies.quality.corpus import (
    VOCAB_SIZE,
    WindowSampler,
    embedded_documents,
    load_corpus,
    read_documents,
    split_documents,
    validation_windows,
)


def test_embedded_split_is_deterministic_and_disjoint() -> None:
    a = load_corpus()
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
