"""One training run of the short-training proxy: build the proxy model, train it, validate it.

The steps follow the schedule (schedules.py) with AdamW and gradient clipping; a non-finite loss fails the trial
(TrialFailed), and so does a run that exceeds budget.time_limit_s or is projected to (TimeLimitExceeded). On a
multi-fidelity ladder the run continues from the previous rung's checkpoint and saves its own (checkpoint.py).
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F

from flashsearch.errors import FlashsearchError, TimeLimitExceeded, TrialFailed
from flashsearch.genome import Genome
from flashsearch.proxies.base import Budget, QualityResult

from .checkpoint import RungCheckpoints
from .config import ShortTrainConfig
from flashsearch.data.shards import ShardSampler, TokenShards

from .corpus import ByteCorpus, WindowSampler
from .distributed import DataParallel, RankRows, current, rank_rows
from .schedules import WarmupCosine, WarmupStableDecay, schedule_for

LN2 = math.log(2.0)
_INIT_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    """A forked child holds only the forking thread: a lock another thread held at the fork is never released."""
    global _INIT_LOCK
    _INIT_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def own_seconds(device: Any) -> float:
    """The clock of budget.time_limit_s. On CPU: CPU time of the calling thread, the candidate's own compute, which
    waiting for a core on an oversubscribed machine does not inflate (a wall clock failed good candidates on a
    loaded machine); per thread, so evaluations running as threads of one process do not count each other's work.
    On a GPU the work runs asynchronously to the thread: wall clock."""
    return time.thread_time() if str(device).startswith("cpu") else time.perf_counter()


def check_time(t0: float, t_train: float, done: int, steps: int, limit: float, now: float) -> None:
    """Fail a run past its time limit, or one projected past 1.5x of it. t0, t_train, now: own_seconds() at the
    start, when training began, and now; done of steps trained since t_train."""
    elapsed = now - t0
    if elapsed > limit:
        raise TimeLimitExceeded(f"time limit {limit:g}s exceeded after {done}/{steps} training steps "
                                f"({elapsed:.1f}s); raise budget.time_limit_s or lower budget.tokens")
    # Give up early on a candidate that clearly cannot finish, instead of burning the whole limit; only after a
    # warm-up share of the steps (the first steps pay allocation and cache warm-up).
    if max(5, steps // 10) <= done < steps:
        projected = elapsed + (now - t_train) / done * (steps - done)
        if projected > 1.5 * limit:
            raise TimeLimitExceeded(f"time limit {limit:g}s would be exceeded: {done}/{steps} steps took "
                                    f"{now - t_train:.1f}s, projected total {projected:.0f}s; raise "
                                    "budget.time_limit_s or lower budget.tokens")


def build_model(cfg: ShortTrainConfig, pg: Genome, seed: int) -> tuple[torch.nn.Module, int]:
    """The proxy model, initialised from `seed`, and how many of its layers run on the compiled CPU kernels."""
    from flashsearch.model import HybridLM, weight_normalize_
    from flashsearch.model.fast import bf16_linears_, cpu_has_bf16, cpu_kernels_

    # Same init for the same genome. Initialisation is the only use of torch's process-wide RNG: seeded and run
    # under a lock (and the caller's RNG restored), so evaluations running as threads of one process cannot
    # interleave on it.
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HybridLM(pg, meta_tokens=cfg.meta_tokens).to(cfg.device)
    kernels = 0
    if cfg.fast_cpu:
        kernels = cpu_kernels_(model)          # 0 where they cannot be built: the torch forms train instead
        if cpu_has_bf16():
            bf16_linears_(model)
    model.train()
    if cfg.weight_norm:
        weight_normalize_(model)
    return model, kernels


def optimizer(cfg: ShortTrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only. Each group's `lr_scale` multiplies the scheduled LR: with
    cfg.lr_width_base the hidden matrices (every matrix but the tied embedding) get lr_width_base / d_model."""
    embed = {id(p) for name, p in model.named_parameters() if name.startswith(("embed.", "meta"))}
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    hidden = [p for p in matrices if id(p) not in embed]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    d_model = model.genome.d_model if hasattr(model, "genome") else None
    width_scale = cfg.lr_width_base / d_model if cfg.lr_width_base and d_model else 1.0
    wd = cfg.effective_weight_decay
    groups = [{"params": [p for p in matrices if id(p) in embed], "weight_decay": wd, "lr_scale": 1.0},
              {"params": hidden, "weight_decay": wd, "lr_scale": width_scale},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    groups = [g for g in groups if g["params"]]
    try:  # the fused kernel is much cheaper than the per-tensor loop for a few hundred small tensors
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


@torch.inference_mode()
def validate(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: str,
             token_bytes: torch.Tensor | None = None, dp: DataParallel | None = None) -> float:
    """Bits per byte over the fixed validation windows [N, T+1]: the targets' summed NLL in bits over the bytes of
    text they decode to (token_bytes[id]; None: one byte per id, the byte vocabulary), so any tokenizer compares.
    Data parallel (dp): each rank scores every world_size-th window and the sums are added up."""
    if dp is not None:
        windows = windows[dp.rank::dp.world_size]
    model.eval()
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        targets = chunk[:, 1:]
        chunk = chunk.to(device)
        logits = model(chunk[:, :-1])
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                       reduction="sum"))
        count += targets.numel() if token_bytes is None else int(token_bytes[targets].sum())
    model.train()
    if dp is not None:
        total, count = dp.sum2(total, count)
    return total / count / LN2


def _check_time(dp: DataParallel | None, *args: float) -> None:
    """check_time, agreed over the ranks: a run stops on every rank when any rank is past its limit (a rank that
    stopped alone would leave the others waiting in the next collective)."""
    if dp is None:
        return check_time(*args)  # type: ignore[arg-type]
    try:
        check_time(*args)  # type: ignore[arg-type]
        why = None
    except TimeLimitExceeded as exc:
        why = exc
    if dp.any(why is not None):
        raise why or TimeLimitExceeded("time limit exceeded on another worker of this data-parallel trial")


def rung_schedule(cfg: ShortTrainConfig, budget: Budget) -> tuple[WarmupCosine | WarmupStableDecay, int | None]:
    """The LR schedule of a training of budget.tokens under cfg, and its rung index (None: one budget)."""
    return schedule_for(budget, cfg.batch_size * cfg.seq_len, cfg.warmup_fraction, cfg.decay_fraction,
                        cfg.min_lr_ratio, cfg.warmup_steps)


def _checkpoints(cfg: ShortTrainConfig, budget: Budget, genome_id: str, seed: int, rung: int | None
                 ) -> RungCheckpoints:
    prev_stable_end = None
    if rung:  # the previous rung's checkpoint was taken at the end of its stable phase
        prev = Budget(tokens=budget.ladder[rung - 1], ladder=budget.ladder)
        prev_stable_end = rung_schedule(cfg, prev)[0].stable_end  # type: ignore[union-attr]  # a ladder: WSD
    return RungCheckpoints(budget, cfg.identity(), genome_id, seed, rung, cfg.batch_size * cfg.seq_len,
                           prev_stable_end)


def peak_flops(device: str) -> float | None:
    """The bf16 peak FLOP/s of a CUDA device we have a profile for (proxies/latency/devices), else None."""
    if device.split(":")[0] != "cuda" or not torch.cuda.is_available():
        return None
    from flashsearch.proxies.latency.devices import device_for_gpu, load_device

    profile = device_for_gpu(torch.cuda.get_device_name(torch.device(device)))
    return None if profile is None else float(load_device(profile).peak_tflops.get("bf16", 0.0)) * 1e12 or None


def _throughput(cfg: ShortTrainConfig, n_params: int, tokens: int, seconds: float, devices: int) -> dict[str, Any]:
    """Tokens/s of this training (the global batch's tokens, all ranks) and its model FLOPs utilisation: 6 x params
    FLOPs per token (forward and backward, the attention score term left out) over `devices` x the device's bf16
    peak; None where the peak is unknown (CPU, an unprofiled GPU)."""
    tokens_per_s = tokens / seconds if seconds > 0 else float("nan")
    peak = peak_flops(cfg.device)
    mfu = 6.0 * n_params * tokens_per_s / (peak * devices) if peak else None
    return {"tokens_per_s": round(tokens_per_s, 1), "mfu": None if mfu is None else round(mfu, 4)}


def train(cfg: ShortTrainConfig, genome_id: str, pg: Genome, budget: Budget, seed: int,
          corpus: ByteCorpus | TokenShards, val_windows: torch.Tensor, clock_start: float,
          token_bytes: torch.Tensor | None = None) -> QualityResult:
    """Train proxy genome `pg` (of genome `genome_id`) on budget.tokens tokens of corpus.train with `seed` and
    return its validation bits per byte (token_bytes: bytes per id of a tokenizer; None: bytes). clock_start:
    own_seconds() when the evaluation began (the time limit counts from there). QualityResult.seconds is this
    call's wall time."""
    from flashsearch.model import weight_normalize_

    t0 = time.perf_counter()
    tokens_per_step = cfg.batch_size * cfg.seq_len
    steps = int(budget.tokens) // tokens_per_step
    if steps < 1:
        raise FlashsearchError(f"budget.tokens={budget.tokens} is less than one step of short_train "
                               f"(batch_size x seq_len = {tokens_per_step}); raise budget.tokens")
    schedule, rung = rung_schedule(cfg, budget)
    model, kernels = build_model(cfg, pg, seed)
    n_params = sum(p.numel() for p in model.parameters())
    opt = optimizer(cfg, model)
    dp = current()                   # data parallel (distributed.py): this rank trains on its rows of each batch
    net = model if dp is None else dp.wrap(model)
    if cfg.compile:
        net = torch.compile(net)
    amp = cfg.autocast_dtype         # bf16 autocast: master weights and AdamW state stay fp32
    device_type = cfg.device.split(":")[0]
    rows = rank_rows(cfg.batch_size, dp)
    sampler: WindowSampler | ShardSampler | RankRows = (
        ShardSampler(corpus.train, cfg.batch_size, cfg.seq_len, seed=seed, rank=dp.rank if dp else 0,
                     world_size=dp.world_size if dp else 1) if isinstance(corpus, TokenShards)
        else WindowSampler(corpus.train, cfg.batch_size, cfg.seq_len, seed=seed))
    if dp is not None and isinstance(sampler, WindowSampler):
        sampler = RankRows(sampler, rows)

    # The curve is in bits per byte too: per token over the training split's mean bytes per token (1 for bytes).
    bytes_per_token = corpus.train.bytes / len(corpus.train) if isinstance(corpus, TokenShards) else 1.0
    curve: list[tuple[int, float]] = []
    window_loss, window_n, start = 0.0, 0, 0     # the training loss summed since the last curve point
    ckpt = _checkpoints(cfg, budget, genome_id, seed, rung)
    resumed = ckpt.resume(model, opt, sampler.generator)
    if resumed is not None:
        start, window_loss, window_n = int(resumed["step"]), *resumed["window"]
        curve = [(int(a), float(b)) for a, b in resumed["curve"]]
    save_at = ckpt.save_step(schedule.stable_end) if isinstance(schedule, WarmupStableDecay) else None
    t_train, c_train = time.perf_counter(), own_seconds(cfg.device)
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * group.get("lr_scale", 1.0) * schedule(step)
        batch = sampler.sample().to(cfg.device)                      # [B, T+1] (B / world_size per rank)
        with torch.autocast(device_type=device_type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            logits = net(batch[:, :-1])                              # [B, T, vocab]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        value = float(loss.detach()) if dp is None else dp.mean(loss)   # all ranks agree on divergence
        if not math.isfinite(value):
            raise TrialFailed(f"loss diverged to {value} at step {step + 1}/{steps} "
                              f"(proxy d_model={pg.d_model}, lr={cfg.lr:g}); lower short_train.lr")
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cfg.weight_norm:
            weight_normalize_(model)
        window_loss, window_n = window_loss + value, window_n + 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            curve.append((step + 1, window_loss / window_n / LN2 / bytes_per_token))  # bits/byte, train batches
            window_loss, window_n = 0.0, 0
        if step + 1 == save_at:  # the end of this rung's stable phase: where the next rung continues
            if dp is None or dp.is_writer:   # ranks hold equal states: rank 0 writes, the others wait for it
                ckpt.save(model, opt, sampler.generator, step + 1, curve, (window_loss, window_n))
            if dp is not None:
                dp.barrier()
        if budget.time_limit_s is not None:
            _check_time(dp, clock_start, c_train, step + 1 - start, steps - start, float(budget.time_limit_s),
                        own_seconds(cfg.device))
    train_seconds = time.perf_counter() - t_train
    throughput = _throughput(cfg, n_params, (steps - start) * tokens_per_step, train_seconds,
                             dp.world_size if dp else 1)

    t_val = time.perf_counter()
    val_bpb = validate(model, val_windows, cfg.batch_size, cfg.device, token_bytes, dp)
    validate_seconds = time.perf_counter() - t_val
    if not math.isfinite(val_bpb):
        raise TrialFailed(f"validation loss is {val_bpb} after {steps} steps (proxy d_model={pg.d_model})")
    from flashsearch.kernels.base import paths_run

    return QualityResult(
        loss=val_bpb, metric="val_bpb", curve=tuple(curve), proxy_params=n_params,
        tokens=steps * tokens_per_step, seconds=time.perf_counter() - t0,
        extra={"steps": steps, "proxy_d_model": pg.d_model, "proxy_n_heads": pg.n_heads,
               "resumed_at_step": start, "new_tokens": (steps - start) * tokens_per_step,
               "train_seconds": round(train_seconds, 3), "validate_seconds": round(validate_seconds, 3),
               "data": corpus.source, "cpu_kernel_layers": kernels, "workers": dp.world_size if dp else 1,
               "final_train_bpb": curve[-1][1] if curve else float("nan"),
               # per operator, the path its layers ran (fused kernel, CPU kernel or torch form): no silent fallback
               "fast_path": paths_run(model), "precision": "bf16" if amp is not None else "fp32",
               "compiled": cfg.compile, **throughput},
    )


__all__ = ["train", "build_model", "optimizer", "validate", "check_time", "own_seconds", "rung_schedule", "LN2"]
