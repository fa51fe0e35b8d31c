"""The proxy's training precision: bf16 autocast with fp32 master weights and optimizer state (the GPU default),
tokens/s and model FLOPs utilisation recorded per trial. On CPU the bf16 path runs under CPU autocast."""

from __future__ import annotations

import pytest
import torch

from factories import full_size_genome
from flashsearch.errors import FlashsearchError
from flashsearch.proxies.base import Budget
from flashsearch.proxies.quality import train_loop
from flashsearch.proxies.quality.config import ShortTrainConfig
from flashsearch.proxies.quality.short_train import ShortTrain

GENOME = full_size_genome(("deltanet", "ffn", "mamba2", "ffn", "attention", "ffn"), d_model=1024)
BUDGET = Budget(tokens=24 * 8 * 64)


def proxy(**kw) -> ShortTrain:
    return ShortTrain(seq_len=64, batch_size=8, eval_batches=2, log_every=4, fast=False, **kw)


def test_precision_defaults_and_checks():
    assert ShortTrainConfig().autocast_dtype is None                      # CPU: fp32 (its fast path has bf16 GEMMs)
    assert ShortTrainConfig(device="cuda").autocast_dtype is torch.bfloat16  # GPU: bf16 autocast by default
    assert ShortTrainConfig(device="cuda", precision="fp32").autocast_dtype is None
    assert ShortTrainConfig(precision="bf16", fast=False).autocast_dtype is torch.bfloat16
    with pytest.raises(FlashsearchError, match="quality.precision"):
        ShortTrainConfig(precision="fp8")
    with pytest.raises(FlashsearchError, match="precision=bf16 on CPU needs quality.fast=false"):
        ShortTrainConfig(precision="bf16")


def test_bf16_training_keeps_fp32_masters_and_lands_near_fp32():
    fp32 = proxy().evaluate(GENOME, BUDGET)
    bf16 = proxy(precision="bf16").evaluate(GENOME, BUDGET)
    assert fp32.extra["precision"] == "fp32" and bf16.extra["precision"] == "bf16"
    assert bf16.loss != fp32.loss                                          # it really ran in another precision
    assert abs(bf16.loss - fp32.loss) < 0.1                                # and learned the same
    cfg = ShortTrainConfig(precision="bf16", fast=False, seq_len=64, batch_size=8)
    model, _ = train_loop.build_model(cfg, proxy().proxy_genome(GENOME), seed=0)
    assert all(p.dtype == torch.float32 for p in model.parameters())      # autocast leaves the masters fp32


def test_throughput_is_recorded_and_mfu_only_where_the_peak_is_known(monkeypatch):
    result = proxy().evaluate(GENOME, BUDGET)
    assert result.extra["tokens_per_s"] > 0 and result.extra["mfu"] is None   # a CPU has no bf16 peak profile
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    peak = train_loop.peak_flops("cuda")
    assert peak is not None and 500e12 < peak < 2000e12
    got = train_loop._throughput(ShortTrainConfig(device="cuda"), n_params=10**9, tokens=10**6, seconds=10.0,
                                 devices=2)
    assert got["tokens_per_s"] == 1e5 and got["mfu"] == pytest.approx(6e9 * 1e5 / (2 * peak), rel=1e-3)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert train_loop.peak_flops("cuda") is None
