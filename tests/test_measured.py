"""Measured latency on CPU: real decode steps of a tiny HybridLM, guards and errors."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from factories import TINY_VOCAB, full_size_genome, tiny_genome
from flashsearch.errors import FlashsearchError
from flashsearch.proxies.base import LatencyPredictor, Workload, latency_source
from flashsearch.proxies.latency.measured import INT32_MAX, LatencyStats, MeasuredPredictor, int32_batch_limit
from flashsearch.proxies.latency.static_decoder import StaticDecoder
from flashsearch.proxies.latency.throughput import ThroughputResult, largest_fitting_batch

WORKLOAD = Workload(device="cpu", prompt_len=8, decode_tokens=24)
BIG = full_size_genome(("attention", "ffn") * 12)              # 0.85 B parameters: above measured.max_params


def test_cpu_positive_and_deeper_is_slower() -> None:
    pred = MeasuredPredictor(device="cpu", warmup=2, repeats=3, threads=1)
    assert isinstance(pred, LatencyPredictor)
    assert latency_source(pred) == "measured:cpu"
    shallow = pred.predict(tiny_genome(("attention", "ffn")), WORKLOAD)
    deep = pred.predict(tiny_genome(("deltanet", "ffn", "mamba2", "ffn", "attention", "ffn") * 4), WORKLOAD)
    assert 0 < shallow < deep
    # Every operator with a decode step times cleanly, also without a prompt and at batch > 1.
    t = pred.predict(tiny_genome(("swa", "mamba2", "deltanet", "ffn")), Workload(prompt_len=0, decode_tokens=4, batch=2))
    assert t > 0


def test_threads_are_restored() -> None:
    before = torch.get_num_threads()
    MeasuredPredictor(threads=1, repeats=1, warmup=0).predict(tiny_genome(("attention",)), Workload(prompt_len=2,
                                                                                              decode_tokens=2))
    assert torch.get_num_threads() == before


def test_guards_and_errors() -> None:
    with pytest.raises(FlashsearchError, match="above measured.max_params.*roofline"):
        MeasuredPredictor(device="cpu").predict(BIG, WORKLOAD)
    with pytest.raises(FlashsearchError, match="decode_tokens"):
        MeasuredPredictor().predict(tiny_genome(("attention",)), Workload(decode_tokens=0))
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


def _reference_logits(model, prompt, n):
    """Greedy decode with HybridLM.prefill/step (the eager, Python-position path)."""
    state = model.init_state(prompt.shape[0], prompt.shape[1] + n)
    logits, state = model.prefill(prompt, state)
    token, out = logits[:, -1:].argmax(-1), []
    for _ in range(n):
        logits, state = model.step(token, state)
        out.append(logits)
        token = logits.argmax(-1)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("bucket", [1, 4])
def test_static_decoder_matches_model_step(bucket: int) -> None:
    """The capturable static step (the operators' own steps; device positions, in-place caches, masked attention
    over a bucketed number of rows, static logits buffer) reproduces HybridLM.step, including an SWA ring that
    wraps."""
    from flashsearch.model import HybridLM

    g = tiny_genome(("swa", "ffn", "mamba2", "attention", "deltanet", "gla", "gated_deltanet", "ffn"))  # window 6
    torch.manual_seed(0)
    model = HybridLM(g).eval()
    prompt = torch.randint(0, TINY_VOCAB, (2, 5))
    n = 11
    with torch.inference_mode():
        ref = _reference_logits(model, prompt, n)
        dec = StaticDecoder(model, 2, 5 + n, torch.device("cpu"), torch.float32)
        for _ in range(2):                       # reset really resets
            dec.reset(prompt)
            got = []
            logits = dec.logits
            for _ in range(n):
                dec.step(dec.kv_len(bucket))
                dec.pos_host += 1
                assert dec.logits is logits                  # the static output buffer, never rebound
                got.append(dec.logits.clone())
            torch.testing.assert_close(torch.cat(got, dim=1), ref, rtol=1e-4, atol=1e-4)
        assert len(dec.caches) == 2 and all(int(c.pos) == dec.pos_host == 5 + n for c in dec.caches)
        assert dec.kv_len(4) == 5 + n            # capped at the cache size


def test_measure_stats() -> None:
    pred = MeasuredPredictor(device="cpu", warmup=1, repeats=3, threads=1)
    stats = pred.measure(tiny_genome(("mamba2", "ffn", "attention")), WORKLOAD)
    assert isinstance(stats, LatencyStats) and pred.last_stats == stats
    assert 0 < stats.min_s <= stats.median_s <= stats.max_s and stats.repeats == 3
    assert stats.per_token_ms == pytest.approx(stats.median_s / WORKLOAD.decode_tokens * 1e3)
    assert stats.spread >= 0 and stats.source == "measured:cpu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.median_s = 1.0  # type: ignore[misc]
    t = MeasuredPredictor(device="cpu", warmup=0, repeats=1, threads=1, clock="thread").predict(
        tiny_genome(("attention",)), WORKLOAD)
    assert t > 0
    with pytest.raises(FlashsearchError, match="clock"):
        MeasuredPredictor(clock="cycles")


def test_throughput_cpu_bounded_by_max_batch() -> None:
    pred = MeasuredPredictor(device="cpu", warmup=0, repeats=1, threads=1)
    w = Workload(device="cpu", prompt_len=4, decode_tokens=4)
    tps = pred.max_batch_throughput(tiny_genome(("attention", "ffn")), w, max_batch=6)
    r = pred.last_throughput
    assert isinstance(r, ThroughputResult) and r.batch == 6 and r.limited_by == "max_batch"
    assert tps == pytest.approx(6 * 4 / r.seconds) and tps > 0


def test_batch_search_doubles_then_bisects() -> None:
    for limit, bound in ((11, 1000), (1, 8), (64, 64), (100, 64), (0, 8)):
        calls: list[int] = []
        lo, hi = largest_fitting_batch(lambda b: calls.append(b) or b <= limit, bound)
        assert lo == min(limit, bound) and (hi is None) == (limit >= bound)
        assert hi is None or hi == lo + 1
        assert len(calls) <= 2 * bound.bit_length() + 1


def test_throughput_search_stops_at_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Doubling then bisection: with 'memory' for at most 11 sequences the search lands on 11."""
    pred = MeasuredPredictor(device="cpu", warmup=0, repeats=1, threads=1)
    tried: list[int] = []
    real_fits = MeasuredPredictor._fits

    def fake_fits(self, model, genome, workload, batch):
        tried.append(batch)
        if batch > 11:
            return False                         # what _fits returns after catching OutOfMemoryError
        return real_fits(self, model, genome, workload, batch)

    monkeypatch.setattr(MeasuredPredictor, "_fits", fake_fits)
    pred.max_batch_throughput(tiny_genome(("mamba2",)), Workload(prompt_len=2, decode_tokens=2), max_batch=1000)
    assert pred.last_throughput.batch == 11 and pred.last_throughput.limited_by == "memory"
    assert tried[:5] == [1, 2, 4, 8, 16] and len(tried) <= 9


def test_fits_catches_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    pred = MeasuredPredictor(device="cpu", warmup=0, repeats=1, threads=1)

    def boom(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(StaticDecoder, "__init__", boom)
    with torch.inference_mode():
        assert pred._fits(None, tiny_genome(("mamba2",)), WORKLOAD, 4) is False


def test_int32_batch_limit_is_the_mamba_ssm_offset_bound() -> None:
    """Flash-1B at a 128-token prompt: the issue measured the SSD kernels overflowing above batch ~2048."""
    from flashsearch.builders import load_genome
    from factories import REFERENCE_DIR

    flash = load_genome(REFERENCE_DIR / "nemotron_flash_1b.yaml")         # d_inner 4096, d_state 128, chunk 64
    cap = int32_batch_limit(flash, 128)
    # 2 chunks x 4096 x 128 = 2^20 per sequence; the in_proj slice 128 x (2*4096 + 2*128 + 64) is a bit larger
    assert cap == INT32_MAX // (128 * (2 * 4096 + 2 * 128 + 64)) and 1900 < cap <= 2048
    assert int32_batch_limit(flash, 8192) < cap                            # longer prompts: smaller batches
    assert int32_batch_limit(full_size_genome(["attention", "ffn"]), 128) is None


class _FakeDecoder:
    """Stands in for StaticDecoder in a probe: raises `error` for batches above `limit`, else does nothing."""

    limit, error = 0, RuntimeError("")

    def __init__(self, model, batch, max_len, device, dtype):
        if batch > self.limit:
            raise self.error
        self.pos_host = 0

    def reset(self, prompt):
        pass

    def kv_len(self, bucket):
        return 1

    def step(self, kv):
        pass


@pytest.mark.parametrize("message", ["Triton Error [CUDA]: integer overflow in offset computation",
                                     "numel 3221225472 exceeds int32 indexing range (out of range)"])
def test_size_limit_errors_count_as_not_fitting(monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    import flashsearch.proxies.latency.measured as measured

    monkeypatch.setattr(_FakeDecoder, "limit", 12)
    monkeypatch.setattr(_FakeDecoder, "error", RuntimeError(message))
    monkeypatch.setattr(measured, "StaticDecoder", _FakeDecoder)
    pred = MeasuredPredictor(device="cpu", warmup=0, repeats=1, threads=1)
    g = tiny_genome(("mamba2",))
    with torch.inference_mode():
        lo, hi = largest_fitting_batch(lambda b: pred._fits(None, g, WORKLOAD, b), 1000)
    assert (lo, hi) == (12, 13)
    assert set(pred.probe_errors) == {16, 14, 13} and message in pred.probe_errors[13]   # doubling, bisection


def test_a_probe_that_breaks_the_cuda_context_stops_with_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import flashsearch.proxies.latency.measured as measured

    monkeypatch.setattr(_FakeDecoder, "limit", 3)
    monkeypatch.setattr(_FakeDecoder, "error", RuntimeError(
        "CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA ..."))
    monkeypatch.setattr(measured, "StaticDecoder", _FakeDecoder)
    pred = MeasuredPredictor(device="cpu", warmup=0, repeats=1, threads=1)
    with torch.inference_mode(), pytest.raises(FlashsearchError, match="probe of batch 4 broke the CUDA context.*"
                                               "illegal memory access.*lower max_batch"):
        largest_fitting_batch(lambda b: pred._fits(None, tiny_genome(("mamba2",)), WORKLOAD, b), 1000)
    # Any other error is not swallowed.
    monkeypatch.setattr(_FakeDecoder, "error", ValueError("a bug"))
    with torch.inference_mode(), pytest.raises(ValueError, match="a bug"):
        pred._fits(None, tiny_genome(("mamba2",)), WORKLOAD, 8)


def test_cuda_batch_search_is_capped_below_the_int32_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the search bound is lowered to int32_batch_limit and the reason kept; on CPU nothing is capped."""
    import flashsearch.proxies.latency.throughput as throughput

    seen: list[int] = []

    def fake_search(pred, genome, workload, max_batch):
        seen.append(max_batch)
        return ThroughputResult(batch=max_batch, tokens_per_s=1.0, seconds=1.0, decode_tokens=1,
                                limited_by="max_batch", source=pred.source)

    monkeypatch.setattr(throughput, "max_batch_throughput", fake_search)
    g, w = full_size_genome(["mamba2", "ffn"]), Workload(prompt_len=128, decode_tokens=8)
    pred = MeasuredPredictor(device="cpu")
    pred.max_batch_throughput(g, w, max_batch=4096)
    assert seen == [4096] and pred.batch_cap is None
    pred.device = torch.device("cuda")                                        # the cap logic only; nothing runs
    pred.max_batch_throughput(g, w, max_batch=4096)
    assert seen[-1] == int32_batch_limit(g, 128) < 4096
    assert "int32" in pred.batch_cap and str(seen[-1]) in pred.batch_cap
    pred.max_batch_throughput(g, w, max_batch=16)                             # below the cap: untouched
    assert seen[-1] == 16 and pred.batch_cap is None


def test_isolated_probes_run_in_a_child_and_survive_its_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """isolate_probes: a real probe runs in a child process; a child that dies (as after a broken CUDA context)
    counts as not fitting, with the reason kept, and the parent carries on."""
    pred = MeasuredPredictor(device="cpu", warmup=0, repeats=1, threads=1, isolate_probes=True)
    g = tiny_genome(("mamba2", "attention"))
    assert pred._fits(None, g, WORKLOAD, 2) is True
    crash = [sys.executable, "-c", "import sys; sys.stderr.write('CUDA error: an illegal memory access\\n'); "
                                   "sys.exit(134)"]
    monkeypatch.setattr(MeasuredPredictor, "_probe_command", lambda self, genome, workload, batch: crash)
    assert pred._fits(None, g, WORKLOAD, 64) is False
    assert "exited 134" in pred.probe_errors[64] and "illegal memory access" in pred.probe_errors[64]
    no_room = [sys.executable, "-c", "import sys; sys.exit(3)"]                 # the child's 'out of memory'
    monkeypatch.setattr(MeasuredPredictor, "_probe_command", lambda self, genome, workload, batch: no_room)
    assert pred._fits(None, g, WORKLOAD, 32) is False and 32 not in pred.probe_errors


def test_throughput_refuses_too_large_models() -> None:
    with pytest.raises(FlashsearchError, match="max_params"):
        MeasuredPredictor(device="cpu").max_batch_throughput(BIG, WORKLOAD, max_batch=2)
    with pytest.raises(FlashsearchError, match="max_batch"):
        MeasuredPredictor(device="cpu").max_batch_throughput(tiny_genome(("mamba2",)), WORKLOAD, max_batch=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_path() -> None:
    pred = MeasuredPredictor(device="cuda", repeats=3, bucket=8)
    genome = tiny_genome(("deltanet", "ffn", "mamba2", "ffn", "attention", "ffn", "swa", "ffn"))
    stats = pred.measure(genome, WORKLOAD)
    assert pred.capture_error is None, pred.capture_error
    assert stats.source.startswith("measured:cuda:") and 0 < stats.min_s <= stats.median_s <= stats.max_s


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_matches_eager_step() -> None:
    from flashsearch.model import HybridLM

    g = tiny_genome(("swa", "ffn", "mamba2", "attention", "deltanet", "ffn"))
    torch.manual_seed(0)
    model = HybridLM(g).cuda().eval()
    prompt = torch.randint(0, TINY_VOCAB, (2, 5), device="cuda")
    n, bucket = 12, 4
    with torch.inference_mode():
        ref = _reference_logits(model, prompt, n)
        pred = MeasuredPredictor(device="cuda", bucket=bucket, dtype="fp32")
        dec = StaticDecoder(model, 2, 5 + n, torch.device("cuda"), torch.float32)
        graphs = dec.capture(prompt, n, bucket)
        dec.reset(prompt)
        got = []
        for _ in range(n):
            graphs[dec.kv_len(bucket)].replay()
            dec.pos_host += 1
            got.append(dec.logits.clone())
    torch.testing.assert_close(torch.cat(got, dim=1), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_eager_fallback_and_throughput(monkeypatch: pytest.MonkeyPatch) -> None:
    pred = MeasuredPredictor(device="cuda", repeats=1)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: (_ for _ in ()).throw(RuntimeError("no graphs")))
    pred.predict(tiny_genome(("attention", "ffn")), WORKLOAD)
    assert pred.source.startswith("measured:cuda-eager:") and "no graphs" in pred.capture_error
    monkeypatch.undo()
    tps = MeasuredPredictor(device="cuda", repeats=1).max_batch_throughput(
        tiny_genome(("attention", "ffn")), WORKLOAD, max_batch=64)
    assert tps > 0
