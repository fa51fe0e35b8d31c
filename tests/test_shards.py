"""Token shards read lazily (flashsearch/data/shards.py) and the quality proxy trained on them: nothing read before
use, seeded batches that do not depend on the object or the number of workers, fixed validation windows, and a
score in bits per byte of text whatever the tokenizer."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from factories import HYBRID_YAML, TINY_RUN, tiny_genome
from flashsearch.data.prepare import PrepareConfig, prepare
from flashsearch.data.shards import ShardSampler, TokenShards, validation_windows
from flashsearch.data.tokenizer import train_bpe
from flashsearch.errors import FlashsearchError
from flashsearch.proxies.base import Budget
from flashsearch.proxies.quality import corpus as byte_corpus
from flashsearch.proxies.quality.short_train import ShortTrain
from flashsearch.proxies.quality.train_loop import validate

BPE_VOCAB = 300                 # asked for; a tiny text may give fewer merges


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One text as a .jsonl file, its byte shards, a small BPE and the text's shards under that BPE."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "déjà", "vu", "日本", "and", "then", "slept", "."]
    with (root / "text.jsonl").open("w") as fh:
        for i in range(300):
            fh.write(json.dumps({"text": " ".join(rng.choice(words, size=int(rng.integers(5, 60))))}) + "\n")
    (root / "tokenizer.json").write_text(train_bpe([" ".join(words) * 20] * 5, vocab_size=BPE_VOCAB))
    prepare(str(root / "text.jsonl"), root / "bytes", "bytes", PrepareConfig(shard_tokens=97))
    prepare(str(root / "text.jsonl"), root / "bpe", str(root / "tokenizer.json"), PrepareConfig(shard_tokens=61))
    return {"root": root, "text": root / "text.jsonl", "bytes": root / "bytes", "bpe": root / "bpe",
            "tokenizer": root / "tokenizer.json"}


def test_nothing_is_read_before_use_and_it_pickles_as_its_path(data: dict[str, Path]) -> None:
    shards = TokenShards(data["bpe"])
    assert shards.train._maps == {} and shards.validation._maps == {}
    shards.train.read(100, 130)
    assert set(shards.train._maps) == {1, 2}             # the two shards that hold ids 100..129 (61 per shard)
    blob = pickle.dumps(shards)
    assert len(blob) < 1000                               # a worker gets the folder, not the tokens
    again = pickle.loads(blob)
    assert again.train._maps == {} and np.array_equal(again.train.read(0, 500), shards.train.read(0, 500))


def test_reads_run_across_shard_ends(data: dict[str, Path]) -> None:
    shards = TokenShards(data["bpe"])
    whole = np.concatenate([np.fromfile(f, dtype=shards.dtype) for f in shards.train.files])
    assert len(whole) == len(shards.train) and len(shards.train.files) > 5
    rng = np.random.default_rng(1)
    for a in rng.integers(0, len(whole) - 200, size=20):
        b = int(a) + int(rng.integers(0, 200))
        assert np.array_equal(shards.train.read(int(a), b), whole[a:b])
    with pytest.raises(IndexError):
        shards.train.read(0, len(whole) + 1)


def test_the_same_batches_for_a_seed_on_any_object_and_any_number_of_workers(data: dict[str, Path]) -> None:
    def batches(seed: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
        sampler = ShardSampler(TokenShards(data["bpe"]).train, 8, 16, seed=seed, rank=rank, world_size=world)
        return [sampler.sample() for _ in range(4)]

    one = batches(5)
    assert all(b.shape == (8, 17) and b.dtype == torch.int64 for b in one)
    assert all(torch.equal(a, b) for a, b in zip(one, batches(5)))
    assert not torch.equal(one[0], batches(6)[0])
    halves = zip(batches(5, 0, 2), batches(5, 1, 2))
    assert all(torch.equal(torch.cat(pair), full) for pair, full in zip(halves, one))
    with pytest.raises(FlashsearchError, match="split evenly over 3 workers"):
        ShardSampler(TokenShards(data["bpe"]).train, 8, 16, world_size=3)


def test_byte_shards_give_the_byte_corpus_batches_and_validation_windows(data: dict[str, Path]) -> None:
    corpus = byte_corpus.load_corpus(str(data["text"]))
    shards = TokenShards(data["bytes"])
    ours = ShardSampler(shards.train, 4, 32, seed=3)
    theirs = byte_corpus.WindowSampler(corpus.train, 4, 32, seed=3)
    assert all(torch.equal(ours.sample(), theirs.sample()) for _ in range(5))
    assert torch.equal(validation_windows(shards.validation, 32, 16),
                       byte_corpus.validation_windows(corpus.validation, 32, 16))


def test_validation_windows_are_fixed_and_evenly_spread(data: dict[str, Path]) -> None:
    a = validation_windows(TokenShards(data["bpe"]).validation, 24, 10)
    b = validation_windows(TokenShards(data["bpe"]).validation, 24, 10)
    assert torch.equal(a, b) and a.shape == (10, 25)
    val = TokenShards(data["bpe"]).validation
    assert torch.equal(a[0], torch.from_numpy(val.read(0, 25).astype(np.int64)))
    assert torch.equal(a[-1], torch.from_numpy(val.read(len(val) - 25, len(val)).astype(np.int64)))


class Bigram(torch.nn.Module):
    """logits[b, t] = table[ids[b, t]]: a model whose every probability is easy to compute by hand."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def test_bits_per_byte_is_the_targets_nll_in_bits_over_their_bytes_of_text(data: dict[str, Path]) -> None:
    shards = TokenShards(data["bpe"])
    pieces = shards.tokenizer().pieces
    windows = validation_windows(shards.validation, 12, 5)
    model = Bigram(shards.vocab_size)
    bits, n_bytes = 0.0, 0
    for window in windows.tolist():                       # by hand: one target at a time
        for x, y in zip(window[:-1], window[1:]):
            row = model.table[x].tolist()
            log_z = math.log(sum(math.exp(v) for v in row))
            bits += (log_z - row[y]) / math.log(2)
            n_bytes += len(pieces[y])
    assert n_bytes > windows[:, 1:].numel()              # subword ids: more bytes than targets
    got = validate(model, windows, 2, "cpu", shards.token_bytes())
    assert got == pytest.approx(bits / n_bytes, rel=1e-5)
    per_token = validate(model, windows, 2, "cpu")       # no byte counts: one byte per id (the byte corpus)
    assert per_token == pytest.approx(bits / windows[:, 1:].numel(), rel=1e-5)


def test_two_tokenizers_count_the_same_bytes_of_the_same_text(data: dict[str, Path]) -> None:
    """The denominator is text, not ids: both tokenizations of the validation split count its bytes, and a model
    that knows nothing scores log2(vocab) bits per id spread over the bytes its ids stand for."""
    totals = []
    for name in ("bytes", "bpe"):
        shards = TokenShards(data[name])
        ids = torch.from_numpy(shards.validation.read(0, len(shards.validation)).astype(np.int64))
        totals.append(int(shards.token_bytes()[ids].sum()))
        assert totals[-1] == shards.validation.bytes
        windows = validation_windows(shards.validation, 16, 8)
        uniform = Bigram(shards.vocab_size)
        torch.nn.init.zeros_(uniform.table)
        expected = math.log2(shards.vocab_size) * windows[:, 1:].numel() / int(shards.token_bytes()[windows[:, 1:]]
                                                                                .sum())
        assert validate(uniform, windows, 4, "cpu", shards.token_bytes()) == pytest.approx(expected, rel=1e-6)
    corpus = byte_corpus.load_corpus(str(data["text"]))
    assert totals[0] == totals[1] == corpus.validation.numel()


SMALL = dict(seq_len=32, batch_size=4, eval_batches=2, log_every=5)


def test_short_train_on_byte_shards_scores_as_on_the_byte_corpus(data: dict[str, Path]) -> None:
    budget = Budget(tokens=10 * 4 * 32)
    on_bytes = ShortTrain(data_path=str(data["text"]), **SMALL).evaluate(tiny_genome(), budget)
    on_shards = ShortTrain(shards=str(data["bytes"]), **SMALL).evaluate(tiny_genome(), budget)
    assert on_shards.loss == on_bytes.loss and on_shards.curve == on_bytes.curve
    assert on_shards.extra["data"].startswith("shards:")


def test_short_train_on_subword_shards_uses_the_tokenizer_vocabulary(data: dict[str, Path]) -> None:
    proxy = ShortTrain(shards=str(data["bpe"]), **SMALL)
    vocab = TokenShards(data["bpe"]).vocab_size
    assert 256 < vocab <= BPE_VOCAB and proxy.proxy_genome(tiny_genome()).vocab_size == vocab
    result = proxy.evaluate(tiny_genome(), Budget(tokens=10 * 4 * 32))
    assert math.isfinite(result.loss) and result.extra["steps"] == 10 and len(result.curve) == 2
    assert "shards_fingerprint" in proxy.identity()


def test_a_tokenizer_alone_tokenizes_the_text_once_into_cached_shards(data: dict[str, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHSEARCH_CACHE_DIR", str(tmp_path))
    proxy = ShortTrain(data_path=str(data["text"]), tokenizer=str(data["tokenizer"]), **SMALL)
    shards = proxy.corpus()
    assert isinstance(shards, TokenShards) and shards.directory.parent == tmp_path / "shards"
    assert proxy.vocab_size == TokenShards(data["bpe"]).vocab_size
    stamp = (shards.directory / "manifest.json").stat().st_mtime_ns
    again = ShortTrain(data_path=str(data["text"]), tokenizer=str(data["tokenizer"]), **SMALL).corpus()
    assert again.directory == shards.directory and (shards.directory / "manifest.json").stat().st_mtime_ns == stamp
    assert ShortTrain(data_path=str(data["text"]), tokenizer="bytes", **SMALL).config == \
        ShortTrain(data_path=str(data["text"]), **SMALL).config          # bytes is the byte corpus itself


def test_a_run_config_passes_the_shards_to_the_proxy(data: dict[str, Path]) -> None:
    from flashsearch.builders import build_quality
    from flashsearch.config import load_config

    with pytest.raises(FlashsearchError, match=r"data.shards and data.tokenizer are both set.*data.tokenizer=null"):
        load_config(HYBRID_YAML, [f"data.shards={data['bpe']}"])     # the shipped YAML names our BPE
    proxy = build_quality(load_config(HYBRID_YAML, [f"data.shards={data['bpe']}", "data.tokenizer=null"]))
    assert proxy.config.shards == str(data["bpe"]) and proxy.vocab_size == TokenShards(data["bpe"]).vocab_size
    with pytest.raises(FlashsearchError, match="data.shards and data.corpus are both set"):
        load_config(HYBRID_YAML, [f"data.shards={data['bpe']}", "data.tokenizer=null", "data.corpus=pydoc"])
    with pytest.raises(FlashsearchError, match="quality.shards is set, and so is quality.tokenizer"):
        ShortTrain(shards=str(data["bpe"]), tokenizer="bpe")


def test_a_run_on_missing_shards_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flashsearch.cli import main

    code = main(["run", HYBRID_YAML, f"data.shards={tmp_path / 'nowhere'}", "data.tokenizer=null",
                 f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: shards folder") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_search_runs_on_shards(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`flashsearch run` end to end with data.shards: every candidate trains on the tokens (~30 s)."""
    import pandas as pd

    from flashsearch.cli import main

    code = main(["run", HYBRID_YAML, *TINY_RUN, f"data.shards={data['bpe']}", f"out_dir={tmp_path / 'run'}"])
    assert code == 0, capsys.readouterr().err
    done = pd.read_parquet(tmp_path / "run" / "trials.parquet").query("state == 'COMPLETE'")
    assert len(done) == 5 and (done["quality"] > 0).all()
    from flashsearch.genome import Genome
    from flashsearch.model import count_parameters

    proxy = ShortTrain(shards=str(data["bpe"]))          # the proxies trained have the tokenizer's vocabulary
    for genome_json, params in zip(done["genome_json"], done["metrics.proxy_params"]):
        assert count_parameters(proxy.proxy_genome(Genome.from_dict(json.loads(genome_json)))) == params
