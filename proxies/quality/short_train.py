"""Short-training quality proxy: train a width-scaled copy of the genome on bytes, report validation bits/byte.

This is the inner loop of a search, so it is tuned for CPU throughput: the proxy keeps the genome's layer
pattern (depth and operator mix are what the search varies) but divides the width by `width_divisor`, shrinks
the per-head sizes, uses the 256-byte vocabulary and short sequences. The fixed seed makes the score of a
genome reproducible; every candidate sees the same batches and the same validation windows, so differences
between candidates come from the architecture.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from flashsearch import operators
from flashsearch.errors import FlashsearchError, TimeLimitExceeded, TrialFailed
from flashsearch.genome import Genome
from flashsearch.proxies.base import Budget, QualityResult
from flashsearch.model.fast import with_proxy_chunk_size
from flashsearch.proxies.quality.corpus import (DEFAULT_CORPUS, VOCAB_SIZE, ByteCorpus, WindowSampler, check_corpus,
                                                load_corpus, validation_windows)

LN2 = math.log(2.0)


def _own_seconds(device: Any) -> float:
    """The clock of budget.time_limit_s. On CPU: CPU time of the calling thread, the candidate's own compute, which
    waiting for a core on an oversubscribed machine does not inflate (wall clock did: a seed needing ~200 s was
    projected at 1547 s after 5 steps and failed); per thread, so evaluations running as threads of one process
    do not count each other's work. On a GPU the work runs asynchronously to the thread: wall clock."""
    return time.thread_time() if str(device).startswith("cpu") else time.perf_counter()


_INIT_LOCK = threading.Lock()
_THREADS_LOCK = threading.Lock()
_CORPUS_LOCK = threading.Lock()
_threads_state = {"active": 0, "restore": 0}


def _reset_after_fork() -> None:
    """A forked child (the studies' job pool forks) holds only the forking thread: a lock another thread held at
    the fork would never be released there, and that thread's evaluation is not running there."""
    global _INIT_LOCK, _THREADS_LOCK, _CORPUS_LOCK
    _INIT_LOCK, _THREADS_LOCK, _CORPUS_LOCK = threading.Lock(), threading.Lock(), threading.Lock()
    _threads_state.update(active=0, restore=0)


os.register_at_fork(after_in_child=_reset_after_fork)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's thread count is process-wide: set it when the first of the evaluations running in this process
    starts and restore it when the last one ends (not set and restored around each, which races between
    evaluations running as threads)."""
    with _THREADS_LOCK:
        if _threads_state["active"] == 0:
            _threads_state["restore"] = torch.get_num_threads()
            if n is not None:
                torch.set_num_threads(n)
        _threads_state["active"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_state["active"] -= 1
            if _threads_state["active"] == 0:
                torch.set_num_threads(_threads_state["restore"])


@dataclass(frozen=True)
class _Schedule:
    """Linear warmup to peak, then cosine decay to min_ratio x peak (as a multiplier of the peak LR)."""

    steps: int
    warmup: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.steps - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class _WarmupStableDecay:
    """Multi-fidelity schedule (warmup-stable-decay): linear warmup, the peak LR held, then a linear decay to
    min_ratio x peak over the last `decay` steps. Every rung of a ladder shares the warmup and the stable phase
    and runs its own decay, so rung k+1 can continue from the checkpoint taken where rung k's decay began: the
    result equals an uninterrupted run to rung k+1 (a cosine schedule depends on the total length from the first
    step, so it cannot be continued)."""

    steps: int
    warmup: int
    decay: int
    min_ratio: float

    @property
    def stable_end(self) -> int:
        return self.steps - self.decay

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if step < self.stable_end:
            return 1.0
        return 1.0 - (1.0 - self.min_ratio) * (step - self.stable_end + 1) / self.decay


def _positive_int(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise FlashsearchError(f"short_train.{name} must be an integer >= {minimum}, got {v!r}")
    return v


def _number(name: str, v: Any, lo: float, hi: float, lo_open: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (v <= lo if lo_open else v < lo) or v > hi:
        bracket = "(" if lo_open else "["
        raise FlashsearchError(f"short_train.{name} must be a number in {bracket}{lo}, {hi}], got {v!r}")
    return float(v)


class ShortTrain:
    """QualityProxy: validation bits-per-byte of a short-trained, width-scaled copy of the genome.

    Width: proxy d_model = genome.d_model // width_divisor rounded to a multiple of head_dim (>= head_dim), so the
    paper's widths 1024..2560 become 64..160 with the defaults. Mamba2 gets the proxy's d_state / head_dim and a
    sliding window keeps its share of the training context: window * seq_len / swa_reference_context
    (swa_reference_context=None keeps the genome's window).
    Training: budget.tokens // (batch_size * seq_len) AdamW steps, linear warmup + cosine, gradient clipping,
    `repeats` > 1 averages that many seeds (see _average_over_seeds);
    optional weight normalization after every step (the Nemotron-Flash recipe, then no weight decay) and
    meta tokens. `device="cuda"` trains on a GPU (the studies' --scale runs); the default search stays on CPU. Score: bits per byte over `eval_batches` x `batch_size` fixed validation windows.

    Defaults were tuned on the pydoc corpus (2 CPU cores). CPU cost per token does not depend on the batch
    size here, so for a given token budget more, smaller steps win: at 100k tokens 4 x 128-byte batches
    (195 steps) reached 0.13-0.55 bpb lower than 8 x 128 (97 steps) on hybrid, deep and attention-only genomes,
    and 8 x 128 beat 16 x 128 likewise. lr 3e-3 was the best of {2e-3, 3e-3, 5e-3, 1e-2} (attention-only proxies
    stall above ~5e-3). Weight normalization trained slower at this scale, so it is opt-in.
    """

    def __init__(
        self,
        width_divisor: int = 16,
        head_dim: int = 16,
        mamba2_d_state: int = 16,
        mamba2_head_dim: int = 16,
        swa_reference_context: int | None = 2048,
        seq_len: int = 128,
        batch_size: int = 4,
        lr: float = 3e-3,
        min_lr_ratio: float = 0.1,
        warmup_fraction: float = 0.1,
        decay_fraction: float = 0.2,
        weight_decay: float | None = None,
        weight_norm: bool = False,
        grad_clip: float | None = 1.0,
        meta_tokens: int = 0,
        eval_batches: int = 32,
        log_every: int = 10,
        seed: int = 0,
        repeats: int = 1,
        data_path: str | Path | None = None,
        text_field: str = "text",
        corpus: str | None = None,
        val_fraction: float = 0.1,
        threads: int | None = 1,
        device: str = "cpu",
        fast: bool = True,
    ):
        self.width_divisor = _positive_int("width_divisor", width_divisor)
        self.head_dim = _positive_int("head_dim", head_dim)
        self.mamba2_d_state = _positive_int("mamba2_d_state", mamba2_d_state)
        self.mamba2_head_dim = _positive_int("mamba2_head_dim", mamba2_head_dim)
        self.swa_reference_context = (None if swa_reference_context is None
                                      else _positive_int("swa_reference_context", swa_reference_context))
        self.seq_len = _positive_int("seq_len", seq_len, 2)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.lr = _number("lr", lr, 0.0, 1e38)
        self.min_lr_ratio = _number("min_lr_ratio", min_lr_ratio, 0.0, 1.0, lo_open=False)
        self.warmup_fraction = _number("warmup_fraction", warmup_fraction, 0.0, 1.0, lo_open=False)
        self.decay_fraction = _number("decay_fraction", decay_fraction, 0.0, 1.0)
        if not isinstance(weight_norm, bool):
            raise FlashsearchError(f"short_train.weight_norm must be true or false, got {weight_norm!r}")
        self.weight_norm = weight_norm
        # Weight normalization fixes the norms of the matrices, so decay would only fight it (paper: no decay).
        default_wd = 0.0 if weight_norm else 0.1
        self.weight_decay = default_wd if weight_decay is None else _number("weight_decay", weight_decay, 0.0, 10.0,
                                                                             lo_open=False)
        self.grad_clip = None if grad_clip is None else _number("grad_clip", grad_clip, 0.0, 1e9)
        self.meta_tokens = _positive_int("meta_tokens", meta_tokens, 0)
        self.eval_batches = _positive_int("eval_batches", eval_batches)
        self.log_every = _positive_int("log_every", log_every)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise FlashsearchError(f"short_train.seed must be an integer, got {seed!r}")
        self.seed = seed
        self.repeats = _positive_int("repeats", repeats)
        self.data_path = None if data_path is None else str(data_path)
        if not isinstance(text_field, str) or not text_field:
            raise FlashsearchError(f"short_train.text_field must be a non-empty string, got {text_field!r}")
        self.text_field = text_field
        if corpus is not None and self.data_path is not None:
            raise FlashsearchError("short_train: give data_path (your own text) or corpus (a named one), not both")
        # A named corpus is checked now (known, installed), so a typo fails the run before any worker starts.
        self.corpus_name = None if self.data_path is not None else check_corpus(corpus or DEFAULT_CORPUS)
        self.val_fraction = _number("val_fraction", val_fraction, 0.0, 0.5)
        self.threads = None if threads is None else _positive_int("threads", threads)
        if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
            raise FlashsearchError(f"short_train.device must be 'cpu' or 'cuda[:N]', got {device!r}")
        self.device = device
        if not isinstance(fast, bool):
            raise FlashsearchError(f"short_train.fast must be true or false, got {fast!r}")
        self.fast = fast
        self._corpus: ByteCorpus | None = None
        self._val: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (f"ShortTrain(width_divisor={self.width_divisor}, head_dim={self.head_dim}, seq_len={self.seq_len}, "
                f"batch_size={self.batch_size}, lr={self.lr}, weight_norm={self.weight_norm}, seed={self.seed}, "
                f"fast={self.fast}, data={self.data_path or self.corpus_name})")

    # ---- pieces -----------------------------------------------------------------------------------------------
    def corpus(self) -> ByteCorpus:
        """The data (loaded once per proxy object; errors surface as FlashsearchError on first use).

        Under a lock and published last: evaluations running as threads of one process (ray.address=local) share
        this object, and one that saw the corpus set before its validation windows failed its trial."""
        with _CORPUS_LOCK:
            if self._corpus is None:
                corpus = load_corpus(self.data_path, self.text_field, self.val_fraction,
                                     None if self.data_path is not None else self.corpus_name)
                self._val = validation_windows(corpus.validation, self.seq_len, self.eval_batches * self.batch_size)
                self._corpus = corpus
        return self._corpus

    def proxy_d_model(self, d_model: int) -> int:
        hd = self.head_dim
        return max(hd, int(round(d_model / self.width_divisor / hd)) * hd)

    def proxy_genome(self, genome: Genome) -> Genome:
        """The small genome actually trained: same layers, scaled width and heads, byte vocabulary."""
        g = genome.scaled(self.proxy_d_model(genome.d_model), self.head_dim, vocab_size=VOCAB_SIZE)
        if "mamba2" in g.layer_types:
            g = g.with_options("mamba2", d_state=self.mamba2_d_state, head_dim=self.mamba2_head_dim)
        if "swa" in g.layer_types and self.swa_reference_context is not None:
            window = operators.parse_options("swa", g.options("swa")).window
            scaled = max(1, round(window * self.seq_len / self.swa_reference_context))
            g = g.with_options("swa", window=scaled)
        if self._fast_cpu():
            g = with_proxy_chunk_size(g, self.seq_len)
        return g

    def _fast_cpu(self) -> bool:
        """The fast path applies to CPU training only (on CUDA the fused kernels already do its job)."""
        return self.fast and self.device.split(":")[0] == "cpu"

    # ---- the proxy --------------------------------------------------------------------------------------------
    def evaluate(self, genome: Genome, budget: Budget) -> QualityResult:
        try:
            with _torch_threads(self.threads):
                if self.repeats == 1:
                    return self._evaluate(genome, budget, self.seed)
                return self._average_over_seeds(genome, budget)
        except MemoryError:
            raise TrialFailed(f"out of memory training the proxy of genome {genome.id} "
                              f"({genome.n_layers} layers); lower short_train.batch_size or seq_len") from None

    def _average_over_seeds(self, genome: Genome, budget: Budget) -> QualityResult:
        """`repeats` trainings with seeds seed, seed+1, ...: mean loss. At small budgets the seed (init and data
        order) moves a proxy's loss by up to ~0.5 bits/byte (experiments/results/recipe_ablation.md), which
        averaging shrinks. Each repeat gets 1/repeats of budget.time_limit_s."""
        limit = None if budget.time_limit_s is None else budget.time_limit_s / self.repeats
        each = Budget(tokens=budget.tokens, time_limit_s=limit, ladder=budget.ladder,
                      checkpoint_dir=budget.checkpoint_dir)
        runs = [self._evaluate(genome, each, self.seed + r) for r in range(self.repeats)]
        n = len(runs)
        curve = tuple((step, sum(r.curve[i][1] for r in runs) / n) for i, (step, _) in enumerate(runs[0].curve))
        extra = {**runs[0].extra, "seed_losses": [r.loss for r in runs], "repeats": n,
                 "train_seconds": round(sum(r.extra["train_seconds"] for r in runs), 3),
                 "final_train_bpb": curve[-1][1] if curve else float("nan")}
        return QualityResult(loss=sum(r.loss for r in runs) / n, metric=runs[0].metric, curve=curve,
                             proxy_params=runs[0].proxy_params, tokens=sum(r.tokens for r in runs),
                             seconds=sum(r.seconds for r in runs), extra=extra)

    def _evaluate(self, genome: Genome, budget: Budget, seed: int) -> QualityResult:
        from flashsearch.model import HybridLM, weight_normalize_
        from flashsearch.model.fast import bf16_linears_, cpu_has_bf16, cpu_kernels_

        t0, c0 = time.perf_counter(), _own_seconds(self.device)
        corpus = self.corpus()
        assert self._val is not None
        tokens_per_step = self.batch_size * self.seq_len
        steps = int(budget.tokens) // tokens_per_step
        if steps < 1:
            raise FlashsearchError(f"budget.tokens={budget.tokens} is less than one step of short_train "
                                   f"(batch_size x seq_len = {tokens_per_step}); raise budget.tokens")
        limit = budget.time_limit_s

        pg = self.proxy_genome(genome)
        # Same init for the same genome. Initialisation is the only use of torch's process-wide RNG: seeded and
        # run under a lock (and the caller's RNG restored), so evaluations running as threads of one process
        # (ray.address=local) cannot interleave on it.
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = HybridLM(pg, meta_tokens=self.meta_tokens).to(self.device)
        kernels = 0
        if self._fast_cpu():
            kernels = cpu_kernels_(model)          # 0 where they cannot be built: the torch forms train instead
            if cpu_has_bf16():
                bf16_linears_(model)
        model.train()
        if self.weight_norm:
            weight_normalize_(model)
        n_params = sum(p.numel() for p in model.parameters())
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        try:  # the fused kernel is ~5x cheaper than the per-tensor loop for a few hundred small tensors
            opt = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
        except (RuntimeError, TypeError):
            opt = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.95), eps=1e-8)
        schedule, rung = self._schedule(budget, steps, tokens_per_step)
        sampler = WindowSampler(corpus.train, self.batch_size, self.seq_len, seed=seed)

        curve: list[tuple[int, float]] = []
        window_loss, window_n, start = 0.0, 0, 0
        ckpt = _Checkpoints(self, budget, genome.id, seed, rung, steps, tokens_per_step)
        resumed = ckpt.resume(model, opt, sampler.generator)
        if resumed is not None:
            start, window_loss, window_n = int(resumed["step"]), *resumed["window"]
            curve = [(int(a), float(b)) for a, b in resumed["curve"]]
        save_at = ckpt.save_step(schedule)
        t_train, c_train = time.perf_counter(), _own_seconds(self.device)
        for step in range(start, steps):
            for group in opt.param_groups:
                group["lr"] = self.lr * schedule(step)
            batch = sampler.sample().to(self.device)                     # [B, T+1]
            logits = model(batch[:, :-1])                                # [B, T, 256]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrialFailed(f"loss diverged to {value} at step {step + 1}/{steps} "
                                  f"(proxy d_model={pg.d_model}, lr={self.lr:g}); lower short_train.lr")
            loss.backward()
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if self.weight_norm:
                weight_normalize_(model)
            window_loss, window_n = window_loss + value, window_n + 1
            if (step + 1) % self.log_every == 0 or step + 1 == steps:
                curve.append((step + 1, window_loss / window_n / LN2))  # bits per byte, training batches
                window_loss, window_n = 0.0, 0
            if step + 1 == save_at:  # the end of this rung's stable phase: where the next rung continues
                ckpt.save(model, opt, sampler.generator, step + 1, curve, (window_loss, window_n))
            if limit is not None:
                self._check_time(c0, c_train, step + 1 - start, steps - start, float(limit),
                                 _own_seconds(self.device))
        train_seconds = time.perf_counter() - t_train

        t_val = time.perf_counter()
        val_bpb = self._validate(model)
        validate_seconds = time.perf_counter() - t_val
        if not math.isfinite(val_bpb):
            raise TrialFailed(f"validation loss is {val_bpb} after {steps} steps (proxy d_model={pg.d_model})")
        return QualityResult(
            loss=val_bpb, metric="val_bpb", curve=tuple(curve), proxy_params=n_params,
            tokens=steps * tokens_per_step, seconds=time.perf_counter() - t0,
            extra={"steps": steps, "proxy_d_model": pg.d_model, "proxy_n_heads": pg.n_heads,
                   "resumed_at_step": start, "new_tokens": (steps - start) * tokens_per_step,
                   "train_seconds": round(train_seconds, 3), "validate_seconds": round(validate_seconds, 3),
                   "data": corpus.source, "cpu_kernel_layers": kernels,
                   "final_train_bpb": curve[-1][1] if curve else float("nan")},
        )

    def _schedule(self, budget: Budget, steps: int, tokens_per_step: int) -> tuple[Any, int | None]:
        """The LR schedule and the rung index: cosine for a single budget; warmup-stable-decay sharing warmup and
        stable phase across a multi-fidelity ladder (the warmup is a share of the first rung)."""
        if not budget.ladder:
            return _Schedule(steps, max(1, round(self.warmup_fraction * steps)), self.min_lr_ratio), None
        ladder = tuple(int(t) for t in budget.ladder)
        if int(budget.tokens) not in ladder:
            raise FlashsearchError(f"budget.tokens={budget.tokens} is not a rung of budget.rungs={list(ladder)}")
        first = ladder[0] // tokens_per_step
        if first < 2:
            raise FlashsearchError(f"budget.rungs[0]={ladder[0]} is less than two steps of short_train "
                                   f"(batch_size x seq_len = {tokens_per_step}); raise the first rung")
        decay = max(1, round(self.decay_fraction * steps))
        warmup = max(1, min(round(self.warmup_fraction * first), first - max(1, round(self.decay_fraction * first))))
        return _WarmupStableDecay(steps, warmup, decay, self.min_lr_ratio), ladder.index(int(budget.tokens))

    def identity(self) -> dict[str, Any]:
        """Every setting that shapes a training run (a checkpoint is only continued by the same settings)."""
        return {k: v for k, v in sorted(vars(self).items()) if not k.startswith("_")}

    @staticmethod
    def _check_time(t0: float, t_train: float, done: int, steps: int, limit: float, now: float) -> None:
        """t0, t_train, now: _own_seconds() at the start, when training began, and now."""
        elapsed = now - t0
        if elapsed > limit:
            raise TimeLimitExceeded(f"time limit {limit:g}s exceeded after {done}/{steps} training steps "
                                    f"({elapsed:.1f}s); raise budget.time_limit_s or lower budget.tokens")
        # Give up early on a candidate that clearly cannot finish, instead of burning the whole limit; only after
        # a warm-up share of the steps (the first steps pay allocation and cache warm-up).
        if max(5, steps // 10) <= done < steps:
            projected = elapsed + (now - t_train) / done * (steps - done)
            if projected > 1.5 * limit:
                raise TimeLimitExceeded(f"time limit {limit:g}s would be exceeded: {done}/{steps} steps took "
                                  f"{now - t_train:.1f}s, projected total {projected:.0f}s; raise "
                                  "budget.time_limit_s or lower budget.tokens")

    @torch.inference_mode()
    def _validate(self, model: torch.nn.Module) -> float:
        assert self._val is not None
        model.eval()
        total, count = 0.0, 0
        for chunk in self._val.split(self.batch_size):
            chunk = chunk.to(self.device)
            logits = model(chunk[:, :-1])
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += chunk[:, 1:].numel()
        model.train()
        return total / count / LN2


class _Checkpoints:
    """The rung checkpoints one multi-fidelity training reads and writes (proxies/quality/checkpoint.py): it
    resumes from the previous rung's checkpoint when there is a valid one and saves its own at the end of its
    stable phase when a higher rung may continue from it. Inactive for single-fidelity training."""

    def __init__(self, proxy: ShortTrain, budget: Budget, genome_id: str, seed: int, rung: int | None, steps: int,
                 tokens_per_step: int) -> None:
        self.active = rung is not None and budget.checkpoint_dir is not None
        self.budget, self.genome_id, self.seed, self.rung = budget, genome_id, seed, rung or 0
        self.top = len(budget.ladder) - 1
        self.header = {"genome_id": genome_id, "seed": seed, "ladder": [int(t) for t in budget.ladder],
                       "tokens_per_step": tokens_per_step,
                       "proxy": json.loads(json.dumps(proxy.identity(), default=str))}
        self.prev_stable_end: int | None = None
        if self.active and self.rung > 0:
            prev_steps = int(budget.ladder[self.rung - 1]) // tokens_per_step
            prev = proxy._schedule(Budget(tokens=budget.ladder[self.rung - 1], ladder=budget.ladder), prev_steps,
                                   tokens_per_step)[0]
            self.prev_stable_end = prev.stable_end

    def _path(self, rung: int) -> Path:
        from flashsearch.proxies.quality.checkpoint import checkpoint_path

        assert self.budget.checkpoint_dir is not None
        return checkpoint_path(self.budget.checkpoint_dir, self.genome_id, rung, self.seed)

    def resume(self, model: torch.nn.Module, opt: torch.optim.Optimizer, generator: torch.Generator) -> dict | None:
        if not self.active or self.rung == 0:
            return None
        from flashsearch.proxies.quality.checkpoint import load_training_state

        return load_training_state(self._path(self.rung - 1), model, opt, generator,
                                   {**self.header, "step": self.prev_stable_end})

    def save_step(self, schedule: Any) -> int | None:
        return schedule.stable_end if self.active and self.rung < self.top else None

    def save(self, model: torch.nn.Module, opt: torch.optim.Optimizer, generator: torch.Generator, step: int,
             curve: list, window: tuple[float, int]) -> None:
        from flashsearch.proxies.quality.checkpoint import save_training_state

        save_training_state(self._path(self.rung), model, opt, generator,
                            {**self.header, "step": step, "curve": curve, "window": list(window)})
