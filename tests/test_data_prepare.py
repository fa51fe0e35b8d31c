"""`flashsearch data prepare` (flashsearch/data/prepare.py): text in, token shards out, every document decoding
back to itself; the byte corpus's split; bounded memory; crash safety (an injected failure and a real kill); bad
input as one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from flashsearch.cli import main
from flashsearch.data import prepare as prep
from flashsearch.data import sources
from flashsearch.data.prepare import PrepareConfig, prepare
from flashsearch.data.shards import MANIFEST, TokenShards
from flashsearch.data.tokenizer import train_bpe
from flashsearch.errors import FlashsearchError

LONG_LINE = "é" * 120 + "日本語" * 40 + "🙂" * 30         # no line break, multi-byte characters all along


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pydoc_data import topics

    texts = [topics.topics[k] for k in sorted(topics.topics)[:30]] + [LONG_LINE]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(train_bpe(texts, vocab_size=400))
    return path


def write_corpus(root: Path) -> list[bytes]:
    """.txt, .jsonl and .parquet files (and a hidden one, ignored); their documents in prepare's order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    a = ("First file.\nIt has lines, accents (déjà vu) and 日本語.\n\n" * 8 + LONG_LINE + "\nend\n").encode()
    (root / "a.txt").write_bytes(a)
    records = [{"text": f"record {i}: " + "word " * (i % 7) + ("\n\nsecond paragraph" if i % 5 == 0 else ""),
                "id": i} for i in range(30)]
    records.insert(3, {"text": "", "id": -1})                               # empty: no document
    (root / "b.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    rows = [f"parquet row {i} ünïcödé" if i % 4 else None for i in range(25)]
    pq.write_table(pa.table({"text": rows, "n": list(range(25))}), root / "c.parquet", row_group_size=7)
    (root / "sub").mkdir(exist_ok=True)
    d = "nested file\n".encode() * 3
    (root / "sub" / "d.txt").write_bytes(d)
    (root / ".hidden").mkdir(exist_ok=True)
    (root / ".hidden" / "e.txt").write_text("never read")
    return ([a] + [r["text"].encode() for r in records if r["text"]] + [r.encode() for r in rows if r] + [d])


def decoded_documents(folder: Path) -> list[bytes]:
    shards = TokenShards(folder)
    tok = shards.tokenizer()
    return [tok.decode(stream.read(int(first), int(end)))
            for stream in (shards.train, shards.validation) for first, end in stream.document_spans()]


def test_every_document_decodes_back_to_itself(tmp_path: Path, bpe_file: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CHUNK", 100)           # .txt files in many chunks ...
    monkeypatch.setattr(prep, "LONG_PIECE", 150)         # ... and a long line cut between characters
    monkeypatch.setattr(prep, "ENCODE_BYTES", 500)       # many tokenizer batches
    docs = write_corpus(tmp_path / "corpus")
    out = tmp_path / "shards"
    manifest = prepare(str(tmp_path / "corpus"), out, str(bpe_file), PrepareConfig(shard_tokens=50))
    assert decoded_documents(out) == docs
    train, val = manifest["splits"]["train"], manifest["splits"]["validation"]
    assert manifest["documents"] == len(docs) == train["documents"] + val["documents"]
    assert manifest["bytes"] == sum(map(len, docs)) + 2 * (len(docs) - 2)    # + "\n\n" between documents
    assert manifest["tokenizer"]["vocab_size"] == 400 and manifest["dtype"] == "uint16"
    assert len(train["shards"]) > 10 and all(s["tokens"] == 50 for s in train["shards"][:-1])
    shards = TokenShards(out)
    tok = shards.tokenizer()
    whole = tok.decode(shards.train.read(0, len(shards.train)))
    assert whole == b"\n\n".join(docs[:train["documents"]]) and len(whole) == train["bytes"]
    assert not list(out.glob(".*.tmp"))


def test_one_document_without_line_breaks_is_cut_between_characters(tmp_path: Path, bpe_file: Path) -> None:
    text = ("日本語のテキスト" * 300).encode()              # 3-byte characters, no line break to cut at
    (tmp_path / "one.txt").write_bytes(text)
    manifest = prepare(str(tmp_path / "one.txt"), tmp_path / "out", str(bpe_file))
    cut = manifest["validation"]["cut"]
    assert cut % 3 == 0 and manifest["validation"]["rule"] == "position"
    assert decoded_documents(tmp_path / "out") == [text[:cut], text[cut:]]


def test_non_utf8_text_under_a_subword_tokenizer_is_one_line(tmp_path: Path, bpe_file: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 10)
    with pytest.raises(FlashsearchError, match=r"latin1.txt is not valid UTF-8 .*--tokenizer bytes") as info:
        prepare(str(tmp_path / "latin1.txt"), tmp_path / "out", str(bpe_file))
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()       # refused before writing
    prepare(str(tmp_path / "latin1.txt"), tmp_path / "out", "bytes")      # bytes take any bytes


@pytest.mark.parametrize("which", ["files", "one_txt", "pydoc", "wikipedia_en"])
def test_byte_shards_hold_the_byte_corpus_and_its_split(tmp_path: Path, which: str) -> None:
    """Same documents, same order, same fixed validation split as proxies/quality/corpus.py (trailing documents,
    a single document cut by position, the title-hash split of the Wikipedia corpus)."""
    from flashsearch.proxies.quality.corpus import load_corpus

    if which == "files":
        write_corpus(tmp_path / "corpus")
        (tmp_path / "corpus" / "c.parquet").unlink()      # the byte corpus reads .txt and .jsonl only
        spec, expected = str(tmp_path / "corpus"), load_corpus(str(tmp_path / "corpus"))
    elif which == "one_txt":
        (tmp_path / "one.txt").write_bytes(b"".join(b"line %d of a single document\n" % i for i in range(500)))
        spec, expected = str(tmp_path / "one.txt"), load_corpus(str(tmp_path / "one.txt"))
    else:
        spec, expected = which, load_corpus(corpus=which)
    manifest = prepare(spec, tmp_path / "out", "bytes", PrepareConfig(shard_tokens=100_000))
    shards = TokenShards(tmp_path / "out")
    for split, data in ((shards.train, expected.train), (shards.validation, expected.validation)):
        assert split.read(0, len(split)).astype(np.uint8).tobytes() == data.numpy().tobytes()
    assert manifest["validation"]["rule"] == {"files": "trailing", "one_txt": "position", "pydoc": "trailing",
                                              "wikipedia_en": "hash"}[which]


def _peak_bytes(corpus: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        prepare(str(corpus), out, "bytes", PrepareConfig(shard_tokens=16_384))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_whatever_the_corpus_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prep, "ENCODE_BYTES", 32 << 10)
    sizes = {}
    for name, n_docs in (("small", 1_000), ("large", 4_000)):   # ~1 MB and ~4 MB: 60 and 240 shards
        path = tmp_path / f"{name}.jsonl"
        with path.open("w") as fh:
            for i in range(n_docs):
                fh.write(json.dumps({"text": f"document {i} " + "lorem ipsum dolor " * 55}) + "\n")
        sizes[name] = (path.stat().st_size, _peak_bytes(path, tmp_path / name))
    (small_size, small_peak), (large_size, large_peak) = sizes["small"], sizes["large"]
    assert len(TokenShards(tmp_path / "large").train.files) > 200
    assert large_peak < small_size / 2 < large_size / 8, sizes           # far below the corpus
    assert large_peak < 1.25 * small_peak + (64 << 10), sizes            # and not growing with it


def test_an_interrupted_prepare_leaves_no_manifest_and_a_rerun_completes(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    docs = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    old = prepare(str(tmp_path / "corpus"), out, "bytes", PrepareConfig(shard_tokens=1000))
    real_end = prep.SplitWriter.end_document

    def failing_end(self: prep.SplitWriter) -> None:
        if self.documents == 20:
            raise RuntimeError("disk full")
        real_end(self)

    monkeypatch.setattr(prep.SplitWriter, "end_document", failing_end)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(str(tmp_path / "corpus"), out, "bytes", PrepareConfig(shard_tokens=100))
    assert not (out / MANIFEST).exists()                  # the old manifest went first: it cannot mislead
    with pytest.raises(FlashsearchError, match="has no manifest.json"):
        TokenShards(out)
    monkeypatch.setattr(prep.SplitWriter, "end_document", real_end)
    new = prepare(str(tmp_path / "corpus"), out, "bytes", PrepareConfig(shard_tokens=100))
    assert new["fingerprint"] != old["fingerprint"] and decoded_documents(out) == docs
    assert not list(out.glob(".*.tmp"))


CHILD = """
import sys, time
from flashsearch.data import prepare as prep
from flashsearch.data.tokenizer import BYTE_TOKENIZER
prep.ENCODE_BYTES = 2048
real = BYTE_TOKENIZER.encode
object.__setattr__(BYTE_TOKENIZER, "encode", lambda texts: (time.sleep(0.05), real(texts))[1])
prep.prepare(sys.argv[1], sys.argv[2], BYTE_TOKENIZER, prep.PrepareConfig(shard_tokens=500))
"""


def test_a_killed_prepare_leaves_no_manifest_and_a_rerun_completes(tmp_path: Path) -> None:
    docs = write_corpus(tmp_path / "corpus")
    for i in range(200):
        docs.append((f"more text {i} " * 20).encode())
    with (tmp_path / "corpus" / "z.jsonl").open("w") as fh:
        for d in docs[-200:]:
            fh.write(json.dumps({"text": d.decode()}) + "\n")
    out = tmp_path / "out"
    prepare(str(tmp_path / "corpus"), out, "bytes", PrepareConfig(shard_tokens=1000))      # an old, whole one
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "corpus"), str(out)])
    try:
        deadline = time.time() + 120
        while not list(out.glob(".train-*.bin.tmp")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)                                   # well inside writing the shards
        assert proc.poll() is None, "the child finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / MANIFEST).exists()
    prepare(str(tmp_path / "corpus"), out, "bytes", PrepareConfig(shard_tokens=500))
    assert decoded_documents(out) == docs
    assert not list(out.glob(".*.tmp"))


def test_an_up_to_date_folder_is_left_alone_and_a_changed_input_is_redone(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    first = prepare(str(tmp_path / "corpus"), out, "bytes")
    stamp = (out / "train-00000.bin").stat().st_mtime_ns, (out / MANIFEST).stat().st_mtime_ns
    assert prepare(str(tmp_path / "corpus"), out, "bytes") == first
    assert ((out / "train-00000.bin").stat().st_mtime_ns, (out / MANIFEST).stat().st_mtime_ns) == stamp
    (tmp_path / "corpus" / "sub" / "d.txt").write_text("changed text\n")
    assert prepare(str(tmp_path / "corpus"), out, "bytes")["fingerprint"] != first["fingerprint"]


def test_a_saved_hugging_face_dataset_is_read_without_datasets(tmp_path: Path) -> None:
    """The layout Dataset.save_to_disk writes: Arrow IPC stream files listed in state.json."""
    import pyarrow as pa

    folder = tmp_path / "saved"
    folder.mkdir()
    texts = [f"row {i}: saved dataset text" for i in range(40)]
    names = []
    for part in range(2):
        name = f"data-{part:05d}-of-00002.arrow"
        names.append({"filename": name})
        table = pa.table({"text": texts[part * 20:(part + 1) * 20], "label": list(range(20))})
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=6)
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_split": "train"}))
    (folder / "dataset_info.json").write_text("{}")
    prepare(str(folder), tmp_path / "out", "bytes")
    assert decoded_documents(tmp_path / "out") == [t.encode() for t in texts]


def _wide_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"w{i}": i for i in range(70_000)}, unk_token="w0")).save(str(folder / "wide.json"))
    return folder / "wide.json"


@pytest.mark.parametrize("case, needle", [
    ("missing", "does not exist"),
    ("field", "no field 'body'"),
    ("column", "no column 'body'"),
    ("empty", "holds no text"),
    ("empty_records", "holds no text"),
    ("too_wide", "does not fit uint16"),
    ("no_tokenizer", "is neither bytes, bpe"),
    ("extension", "unsupported data file"),
    ("val_fraction", "val_fraction must be in (0, 1)"),
    ("dataset_dict", "DatasetDict"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         case: str, needle: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "ok.jsonl").write_text('{"text": "fine"}\n{"text": "also fine"}\n')
    args = {
        "missing": [str(tmp_path / "nope.jsonl")],
        "field": [str(tmp_path / "ok.jsonl"), "--text-field", "body"],
        "column": [str(tmp_path / "t.parquet"), "--text-field", "body"],
        "empty": [str(tmp_path / "empty.txt")],
        "empty_records": [str(tmp_path / "blank.jsonl")],
        "too_wide": [str(tmp_path / "ok.jsonl"), "--dtype", "uint16", "--tokenizer", str(tmp_path / "wide.json")],
        "no_tokenizer": [str(tmp_path / "ok.jsonl"), "--tokenizer", str(tmp_path / "nothing.json")],
        "extension": [str(tmp_path / "data.csv")],
        "val_fraction": [str(tmp_path / "ok.jsonl"), "--val-fraction", "1.5"],
        "dataset_dict": [str(tmp_path / "dd")],
    }[case]
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "t.parquet")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n\n')
    (tmp_path / "data.csv").write_text("text\nhello\n")
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    if case == "too_wide":
        _wide_tokenizer(tmp_path)
    out = tmp_path / "out"
    tokenizer = [] if "--tokenizer" in args else ["--tokenizer", "bytes"]   # never train ours here
    code = main(["data", "prepare", args[0], str(out), *args[1:], *tokenizer])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_the_command_prints_where_to_point_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_corpus(tmp_path / "corpus")
    code = main(["data", "prepare", str(tmp_path / "corpus"), str(tmp_path / "out"), "--tokenizer", "bytes",
                 "--shard-tokens", "300", "--val-fraction", "0.2"])
    out = capsys.readouterr().out
    assert code == 0 and f"data.shards={tmp_path / 'out'}" in out
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["shard_tokens"] == 300 and manifest["validation"]["val_fraction"] == 0.2
    assert os.path.getsize(tmp_path / "out" / "train-00000.bin") == 300 * 2
