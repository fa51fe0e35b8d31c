"""Measured latency on CPU: real decode steps of a tiny HybridLM, guards and errors."""

from __future__ import annotations

import pytest
import torch

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import LatencyPredictor, Workload, latency_source
from flashsearch.proxies.measured import MeasuredPredictor

WORKLOAD = Workload(device="cpu", prompt_len=8, decode_tokens=24)


def tiny(layers: tuple[str, ...]) -> Genome:
    return Genome(layer_types=layers, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_ratio=2.0,
                  vocab_size=256, op_options={"mamba2": {"d_state": 16, "head_dim": 16}})


def test_cpu_positive_and_deeper_is_slower() -> None:
    pred = MeasuredPredictor(device="cpu", warmup=2, repeats=3, threads=1)
    assert isinstance(pred, LatencyPredictor)
    assert latency_source(pred) == "measured:cpu"
    shallow = pred.predict(tiny(("attention", "ffn")), WORKLOAD)
    deep = pred.predict(tiny(("deltanet", "ffn", "mamba2", "ffn", "attention", "ffn") * 4), WORKLOAD)
    assert 0 < shallow < deep
    # Every operator with a decode step times cleanly, also without a prompt and at batch > 1.
    t = pred.predict(tiny(("swa", "mamba2", "deltanet", "ffn")), Workload(prompt_len=0, decode_tokens=4, batch=2))
    assert t > 0


def test_threads_are_restored() -> None:
    before = torch.get_num_threads()
    MeasuredPredictor(threads=1, repeats=1, warmup=0).predict(tiny(("attention",)), Workload(prompt_len=2,
                                                                                              decode_tokens=2))
    assert torch.get_num_threads() == before


def test_guards_and_errors() -> None:
    big = Genome(layer_types=("attention", "ffn") * 12, d_model=2048, n_heads=16, n_kv_heads=4, head_dim=128)
    with pytest.raises(FlashsearchError, match="above measured.max_params.*roofline"):
        MeasuredPredictor(device="cpu").predict(big, WORKLOAD)
    with pytest.raises(FlashsearchError, match="decode_tokens"):
        MeasuredPredictor().predict(tiny(("attention",)), Workload(decode_tokens=0))
    with pytest.raises(FlashsearchError, match="repeats"):
        MeasuredPredictor(repeats=0)
    with pytest.raises(FlashsearchError, match="dtype"):
        MeasuredPredictor(dtype="int4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_gpu_name_without_cuda_points_to_roofline() -> None:
    with pytest.raises(FlashsearchError, match="roofline"):
        MeasuredPredictor(device="h100")
    with pytest.raises(FlashsearchError, match="no GPU"):
        MeasuredPredictor(device="cuda")
    assert MeasuredPredictor(device="auto").source == "measured:cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_path() -> None:
    pred = MeasuredPredictor(device="cuda", repeats=2)
    assert pred.source.startswith("measured:cuda:")
    assert pred.predict(tiny(("attention", "ffn")), WORKLOAD) > 0
