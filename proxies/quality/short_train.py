"""Short-training quality proxy: train a width-scaled copy of the genome on text, report validation bits/byte.

This is the inner loop of a search, so it is built for CPU throughput: the proxy keeps the genome's layer
pattern (depth and operator mix are what the search varies) but divides the width by `width_divisor`, lets each
operator shrink the options sized for the full model (Operator.proxy_options), and trains on the 256-byte
vocabulary with short sequences, or on token shards (`shards`, or `tokenizer`: flashsearch/data) with the
tokenizer's vocabulary; the score is bits per byte of validation text either way. The fixed seed makes the score
of a genome reproducible; every candidate sees the same batches and the same validation windows, so differences
between candidates come from the architecture.

Pieces: config.py (the settings), schedules.py (LR schedules), train_loop.py (one training run), checkpoint.py
(rung checkpoints), threads.py (torch's thread count), corpus.py (the byte data; token shards:
flashsearch/data/shards.py). This module builds the proxy genome, averages seeds and is the QualityProxy the
search calls.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Any

from flashsearch import operators
from flashsearch.data.shards import TokenShards
from flashsearch.data.shards import validation_windows as shard_validation_windows
from flashsearch.errors import FlashsearchError, TrialFailed
from flashsearch.genome import Genome
from flashsearch.kernels.base import ProxyScale
from flashsearch.model.fast import with_proxy_chunk_size
from flashsearch.proxies.base import Budget, QualityResult

from .config import ShortTrainConfig
from .corpus import VOCAB_SIZE, ByteCorpus, load_corpus, validation_windows
from .threads import torch_threads
from .train_loop import own_seconds, train

_CORPUS_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    """A forked child holds only the forking thread: a lock another thread held at the fork is never released."""
    global _CORPUS_LOCK
    _CORPUS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


class ShortTrain:
    """QualityProxy: validation bits-per-byte of a short-trained, width-scaled copy of the genome.

    `ShortTrain(lr=1e-3, seq_len=64)` or `ShortTrain(ShortTrainConfig(...))`; the settings, their defaults and
    their checks are ShortTrainConfig's, readable here too (`proxy.lr` is `proxy.config.lr`).
    Width: proxy d_model = genome.d_model // width_divisor rounded to a multiple of head_dim (>= head_dim).
    Training: budget.tokens // (batch_size * seq_len) AdamW steps (train_loop.py); `repeats` > 1 averages that
    many seeds. `device="cuda"` trains on a GPU; the default search stays on CPU. Score: bits per byte over
    `eval_batches` x `batch_size` fixed validation windows.
    """

    def __init__(self, config: ShortTrainConfig | None = None, /, **options: Any) -> None:
        if config is not None and options:
            raise FlashsearchError("ShortTrain takes a ShortTrainConfig or keyword options, not both")
        if config is not None and not isinstance(config, ShortTrainConfig):
            raise FlashsearchError(f"ShortTrain's positional argument must be a ShortTrainConfig, got {config!r}")
        self.config = config if config is not None else ShortTrainConfig.from_options(**options)
        self._corpus: ByteCorpus | TokenShards | None = None
        self._val: Any = None                  # validation windows [N, seq_len + 1], set with the corpus
        self._token_bytes: Any = None          # shards: bytes of text per token id, for bits per byte

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the instance lacks: a setting reads as proxy.<key>.
        if name.startswith("_") or name == "config":
            raise AttributeError(name)
        return getattr(self.config, name)

    def __repr__(self) -> str:
        c = self.config
        return (f"ShortTrain(width_divisor={c.width_divisor}, head_dim={c.head_dim}, seq_len={c.seq_len}, "
                f"batch_size={c.batch_size}, lr={c.lr}, weight_norm={c.weight_norm}, seed={c.seed}, "
                f"fast={c.fast}, data={c.shards or c.data_path or c.corpus_name}"
                + (f", tokenizer={c.tokenizer})" if c.tokenizer else ")"))

    def identity(self) -> dict[str, Any]:
        """Every setting that shapes a training run (fingerprints, cache keys, checkpoint headers)."""
        return self.config.identity()

    # ---- pieces -----------------------------------------------------------------------------------------------
    def corpus(self) -> ByteCorpus | TokenShards:
        """The data (loaded once per proxy object; errors surface as FlashsearchError on first use): the byte
        corpus, or token shards (memory-mapped, read lazily) with `shards` or `tokenizer`.

        Under a lock and published last: evaluations running as threads of one process (ray.address=local) share
        this object, and one that saw the corpus set before its validation windows failed its trial."""
        c = self.config
        with _CORPUS_LOCK:
            if self._corpus is None:
                if c.shards is None and c.tokenizer is None:
                    corpus: ByteCorpus | TokenShards = load_corpus(c.data_path, c.text_field, c.val_fraction,
                                                                   c.corpus_name)
                    self._val = validation_windows(corpus.validation, c.seq_len, c.eval_batches * c.batch_size)
                else:
                    corpus = TokenShards(c.shards or self._cached_shards())
                    self._val = shard_validation_windows(corpus.validation, c.seq_len, c.eval_batches * c.batch_size)
                    self._token_bytes = corpus.token_bytes()
                self._corpus = corpus
        return self._corpus

    def validation_windows(self) -> Any:
        """The fixed validation windows every candidate is scored on: [N, seq_len + 1] ids (loads the data)."""
        self.corpus()
        return self._val

    def _cached_shards(self) -> Any:
        """`tokenizer` without `shards`: the text tokenized once per machine (flashsearch/data/prepare.py)."""
        from flashsearch.data.prepare import cached_shards

        c = self.config
        return cached_shards(c.data_path or c.corpus_name or "", c.tokenizer or "bytes", c.text_field,
                             c.val_fraction, progress=lambda msg: print(f"data: {msg}", file=sys.stderr))

    @property
    def vocab_size(self) -> int:
        """The proxy model's vocabulary: 256 bytes, or the shards' tokenizer's (loads the data)."""
        if self.config.shards is None and self.config.tokenizer is None:
            return VOCAB_SIZE
        corpus = self.corpus()
        assert isinstance(corpus, TokenShards)
        return corpus.vocab_size

    def proxy_d_model(self, d_model: int) -> int:
        hd = self.config.head_dim
        return max(hd, int(round(d_model / self.config.width_divisor / hd)) * hd)

    def scale(self, d_model: int) -> ProxyScale:
        """What the operators' proxy rules are told about the proxy of a genome of width d_model."""
        c = self.config
        return ProxyScale(d_model=self.proxy_d_model(d_model), head_dim=c.head_dim, seq_len=c.seq_len,
                          reference_context=c.swa_reference_context, state_size=c.mamba2_d_state,
                          state_head_dim=c.mamba2_head_dim)

    def proxy_genome(self, genome: Genome) -> Genome:
        """The small genome actually trained: same layers, scaled width and heads, the data's vocabulary (bytes or
        the tokenizer's), and each operator's options as its proxy rule (Operator.proxy_options) sets them."""
        scale = self.scale(genome.d_model)
        g = genome.scaled(scale.d_model, scale.head_dim, vocab_size=self.vocab_size)
        for name in dict.fromkeys(g.layer_types):
            spec = operators.spec(name)
            overrides = spec.cls.proxy_options(spec.parse_options(g.options(spec.name)), scale)
            if overrides:
                g = g.with_options(spec.name, **overrides)
        if self.config.fast_cpu:
            g = with_proxy_chunk_size(g, self.config.seq_len)
        return g

    # ---- the proxy --------------------------------------------------------------------------------------------
    def evaluate(self, genome: Genome, budget: Budget) -> QualityResult:
        try:
            with torch_threads(self.config.threads):
                if self.config.repeats == 1:
                    return self._evaluate(genome, budget, self.config.seed)
                return self._average_over_seeds(genome, budget)
        except MemoryError:
            raise TrialFailed(f"out of memory training the proxy of genome {genome.id} "
                              f"({genome.n_layers} layers); lower short_train.batch_size or seq_len") from None

    def _average_over_seeds(self, genome: Genome, budget: Budget) -> QualityResult:
        """`repeats` trainings with seeds seed, seed+1, ...: mean loss. At small budgets the seed (init and data
        order) moves a proxy's loss a lot (the recipe ablation study's spreads), which averaging shrinks. Each
        repeat gets 1/repeats of budget.time_limit_s."""
        repeats, seed = self.config.repeats, self.config.seed
        limit = None if budget.time_limit_s is None else budget.time_limit_s / repeats
        each = dataclasses.replace(budget, time_limit_s=limit)
        runs = [self._evaluate(genome, each, seed + r) for r in range(repeats)]
        n = len(runs)
        curve = tuple((step, sum(r.curve[i][1] for r in runs) / n) for i, (step, _) in enumerate(runs[0].curve))
        extra = {**runs[0].extra, "seed_losses": [r.loss for r in runs], "repeats": n,
                 "train_seconds": round(sum(r.extra["train_seconds"] for r in runs), 3),
                 "final_train_bpb": curve[-1][1] if curve else float("nan")}
        return QualityResult(loss=sum(r.loss for r in runs) / n, metric=runs[0].metric, curve=curve,
                             proxy_params=runs[0].proxy_params, tokens=sum(r.tokens for r in runs),
                             seconds=sum(r.seconds for r in runs), extra=extra)

    def _evaluate(self, genome: Genome, budget: Budget, seed: int) -> QualityResult:
        """One training with `seed`; its seconds include loading the corpus (once per proxy object)."""
        t0, clock_start = time.perf_counter(), own_seconds(self.config.device)
        corpus = self.corpus()
        result = train(self.config, genome.id, self.proxy_genome(genome), budget, seed, corpus, self._val,
                       clock_start, token_bytes=self._token_bytes)
        return dataclasses.replace(result, seconds=time.perf_counter() - t0)


__all__ = ["ShortTrain", "ShortTrainConfig"]
