"""Roofline latency predictor: physical properties of the model, device profiles, vectorization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from factories import REFERENCE_DIR, flash_1b_genome, full_size_genome
from flashsearch.builders import load_genome
from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import LatencyPredictor, Workload, latency_source
from flashsearch.proxies.latency.devices import known_devices, load_device
from flashsearch.proxies.latency.roofline import HEAD, RooflinePredictor, format_breakdown, piecewise_linear_table

FLASH_1B = flash_1b_genome()


@pytest.fixture(scope="module")
def h100() -> RooflinePredictor:
    return RooflinePredictor("h100")


def test_protocol_and_source(h100: RooflinePredictor) -> None:
    assert isinstance(h100, LatencyPredictor)
    assert latency_source(h100) == "roofline:h100"
    assert RooflinePredictor("A100").source == "roofline:a100"


# roofline:h100 for 8192 decode tokens after a 128-token prompt, batch 1, with the profile fitted to the paper's
# Table 6 (experiments/roofline_fit/results/roofline_fit.md). A change to the roofline model, the H100 profile or an
# operator's decode_cost that moves any of them by more than 5% must be a deliberate recalibration: rerun
# `python -m experiments run roofline_fit`, update h100.yaml and these.
CALIBRATED_H100_S = {"nemotron_flash_1b": 15.24, "qwen3_0_6b": 27.44, "llama3_2_1b": 19.89,
                     "nemotron_flash_3b": 29.13}
PAPER_TABLE6_S = {"nemotron_flash_1b": 14.45, "qwen3_0_6b": 27.55, "llama3_2_1b": 21.44, "nemotron_flash_3b": 28.71}
TABLE6 = Workload(prompt_len=128, decode_tokens=8192)


@pytest.fixture(scope="module")
def table6(h100: RooflinePredictor) -> dict[str, float]:
    return {name: h100.predict(load_genome(REFERENCE_DIR / f"{name}.yaml"), TABLE6) for name in PAPER_TABLE6_S}


@pytest.mark.parametrize("name", sorted(CALIBRATED_H100_S))
def test_reference_latencies_stay_at_their_calibration(table6: dict[str, float], name: str) -> None:
    assert table6[name] == pytest.approx(CALIBRATED_H100_S[name], rel=0.05)


@pytest.mark.parametrize("name", sorted(PAPER_TABLE6_S))
def test_reference_latencies_are_within_10_percent_of_the_paper(table6: dict[str, float], name: str) -> None:
    assert abs(table6[name] / PAPER_TABLE6_S[name] - 1) <= 0.10


def test_qwen_over_flash_ratio_is_the_papers_within_10_percent(table6: dict[str, float]) -> None:
    paper = PAPER_TABLE6_S["qwen3_0_6b"] / PAPER_TABLE6_S["nemotron_flash_1b"]            # 1.91
    assert table6["qwen3_0_6b"] / table6["nemotron_flash_1b"] == pytest.approx(paper, rel=0.10)


def test_fixed_costs_are_per_operator_and_per_kernel(tmp_path: Path) -> None:
    """operator_overhead_us adds exactly its value per layer and for the head, per step; launches pay the rest."""
    base = ("name: g\nmemory_bandwidth_gbs: 1000\npeak_tflops: {bf16: 100}\nmemory_efficiency: 1\n"
            "compute_efficiency: 0.5\nlaunch_overhead_us: 3\neager_launch_overhead_us: 9\n")
    plain, with_ops = tmp_path / "plain.yaml", tmp_path / "ops.yaml"
    plain.write_text(base)
    with_ops.write_text(base + "operator_overhead_us: 40\n")
    g, w = full_size_genome(["mamba2", "ffn", "attention", "ffn"]), Workload(decode_tokens=64)
    extra = RooflinePredictor(str(with_ops)).predict(g, w) - RooflinePredictor(str(plain)).predict(g, w)
    assert extra == pytest.approx(40e-6 * (4 + 1) * 64, rel=1e-9)
    rows = RooflinePredictor(str(plain)).breakdown(g, w)
    assert sum(r.launch_seconds for r in rows) == pytest.approx(3e-6 * 64 * sum(r.launches_per_step for r in rows))
    bad = tmp_path / "bad_ops.yaml"
    bad.write_text(base + "operator_overhead_us: -1\n")
    with pytest.raises(FlashsearchError, match="operator_overhead_us"):
        RooflinePredictor(str(bad))


def test_recurrent_states_are_charged_at_their_fp32_and_kv_caches_at_the_weight_dtype() -> None:
    w = Workload(decode_tokens=128)
    recurrent = full_size_genome(["deltanet", "ffn", "mamba2", "ffn"])
    attention = full_size_genome(["attention", "ffn"] * 2)
    fp32, bf16 = RooflinePredictor("h100"), RooflinePredictor("h100", recurrent_state_dtype="bf16")
    state = {r.op: r.mean_state_bytes for r in fp32.breakdown(recurrent, w)}
    half = {r.op: r.mean_state_bytes for r in bf16.breakdown(recurrent, w)}
    assert state["deltanet"] == pytest.approx(2 * half["deltanet"]) and state["mamba2"] == pytest.approx(
        2 * half["mamba2"])
    assert fp32.predict(recurrent, w) > bf16.predict(recurrent, w)
    assert fp32.predict(attention, w) == bf16.predict(attention, w)       # KV caches: the weight dtype either way


def test_monotone_in_depth_and_context(h100: RooflinePredictor) -> None:
    layers = ["mamba2", "ffn", "attention", "ffn"]
    w = Workload(decode_tokens=512)
    depths = [h100.predict(full_size_genome(layers * k), w) for k in (1, 2, 3)]
    assert all(a < b for a, b in zip(depths, depths[1:]))
    g = full_size_genome(layers)
    prompts = [h100.predict(g, Workload(prompt_len=p, decode_tokens=512)) for p in (0, 2048, 8192)]
    assert all(a < b for a, b in zip(prompts, prompts[1:]))


def test_flash_1b_beats_all_attention_of_fewer_parameters(h100: RooflinePredictor) -> None:
    w = Workload(prompt_len=128, decode_tokens=8192)
    qwen = load_genome(REFERENCE_DIR / "qwen3_0_6b.yaml")                    # 0.6 B against 0.96 B
    assert h100.predict(qwen, w) > h100.predict(FLASH_1B, w)  # paper: 27.55 s vs 14.45 s


def test_more_full_attention_costs_more_at_long_context(h100: RooflinePredictor) -> None:
    # Same weights (SWA and attention share projections); only the number of full-attention layers differs.
    def model(n_full: int) -> Genome:
        return full_size_genome(["attention", "ffn"] * n_full + ["swa", "ffn"] * (8 - n_full))

    long = Workload(prompt_len=128, decode_tokens=8192)
    times = [h100.predict(model(k), long) for k in (0, 2, 6, 8)]
    assert all(a < b for a, b in zip(times, times[1:]))
    # Within the window nothing differs.
    short = Workload(prompt_len=0, decode_tokens=256)
    assert h100.predict(model(8), short) == pytest.approx(h100.predict(model(0), short), rel=1e-12)


def test_swa_is_capped_while_attention_grows(h100: RooflinePredictor) -> None:
    swa = full_size_genome(["swa", "ffn"] * 4, op_options={"swa": {"window": 256}})
    attn = full_size_genome(["attention", "ffn"] * 4)
    w = Workload(prompt_len=0, decode_tokens=4096)
    s_swa, s_attn = h100.step_seconds(swa, w), h100.step_seconds(attn, w)
    # Per-step time of SWA stops growing once the window is full; attention keeps growing.
    assert s_swa[300] == pytest.approx(s_swa[-1], rel=1e-12)
    assert s_swa[100] < s_swa[300]
    assert np.all(np.diff(s_attn) > 0)
    # Below the window both models do the same work.
    assert s_swa[100] == pytest.approx(s_attn[100], rel=1e-12)
    # So the total grows linearly for SWA, super-linearly for attention.
    short, long = Workload(prompt_len=0, decode_tokens=2048), Workload(prompt_len=0, decode_tokens=8192)
    swa_ratio = h100.predict(swa, long) / h100.predict(swa, short)
    attn_ratio = h100.predict(attn, long) / h100.predict(attn, short)
    assert swa_ratio < 4.05 and attn_ratio > swa_ratio


def test_monotone_in_width_and_decode_length(h100: RooflinePredictor) -> None:
    layers = ["deltanet", "ffn", "attention", "ffn", "mamba2", "ffn"]
    w = Workload(decode_tokens=1024)
    times = [h100.predict(full_size_genome(layers, d), w) for d in (1024, 1536, 2048, 2560)]
    assert all(a < b for a, b in zip(times, times[1:]))
    g = full_size_genome(layers)
    lengths = [h100.predict(g, Workload(decode_tokens=n)) for n in (128, 1024, 4096)]
    assert all(a < b for a, b in zip(lengths, lengths[1:]))
    # Larger batch: more state traffic and FLOPs, never faster.
    assert h100.predict(g, Workload(batch=8, decode_tokens=1024)) > times[2]


def test_faster_device_and_eager_launches(h100: RooflinePredictor) -> None:
    g = FLASH_1B
    w = Workload(decode_tokens=1024)
    assert RooflinePredictor("h200").predict(g, w) < h100.predict(g, w) < RooflinePredictor("a100").predict(g, w)
    assert RooflinePredictor("h100", cuda_graphs=False).predict(g, w) > h100.predict(g, w)


def test_vectorized_equals_exact() -> None:
    g = full_size_genome(["swa", "ffn", "attention", "ffn", "mamba2", "deltanet"], op_options={"swa": {"window": 300}})
    w = Workload(prompt_len=17, decode_tokens=1000)
    fast, exact = RooflinePredictor("h100"), RooflinePredictor("h100", exact=True)
    np.testing.assert_allclose(fast.step_seconds(g, w), exact.step_seconds(g, w), rtol=1e-9)


def test_piecewise_linear_table_finds_kinks() -> None:
    def f(c: int) -> np.ndarray:
        return np.array([min(c, 777), 3 * c + 1, max(0, c - 5000)], dtype=float)

    table = piecewise_linear_table(f, 10, 9000)
    expected = np.stack([f(c) for c in range(10, 9001)])
    np.testing.assert_allclose(table, expected, rtol=1e-12)


def test_breakdown_sums_to_predict(h100: RooflinePredictor) -> None:
    g = FLASH_1B
    w = Workload(decode_tokens=2048)
    rows = h100.breakdown(g, w)
    assert [r.op for r in rows] == ["deltanet", "ffn", "mamba2", "attention", HEAD]
    assert sum(r.seconds for r in rows) == pytest.approx(h100.predict(g, w))
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    assert {r.op: r.layers for r in rows}["ffn"] == 12
    assert "total" in format_breakdown(rows)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FlashsearchError, match="unknown device 'tpu9'.*a100, h100, h200"):
        RooflinePredictor("tpu9")
    with pytest.raises(FlashsearchError, match="unknown dtype"):
        RooflinePredictor("h100", dtype="int3")
    with pytest.raises(FlashsearchError, match="no fp8 peak"):
        RooflinePredictor("a100", dtype="fp8")
    with pytest.raises(FlashsearchError, match="decode_tokens"):
        RooflinePredictor().predict(full_size_genome(["attention"]), Workload(decode_tokens=0))


def test_device_profiles_are_data_and_user_files_load(tmp_path: Path) -> None:
    assert {"h100", "a100", "h200"} <= set(known_devices())
    for name in known_devices():
        p = load_device(name)
        assert p.sources and p.memory_bandwidth_gbs > 1000 and p.launch_overhead_us > 0
    custom = tmp_path / "mygpu.yaml"
    custom.write_text("name: mygpu\nmemory_bandwidth_gbs: 1000\npeak_tflops: {bf16: 100}\nmemory_efficiency: 0.8\n"
                      "compute_efficiency: 0.5\nlaunch_overhead_us: 5\neager_launch_overhead_us: 10\n")
    pred = RooflinePredictor(str(custom))
    assert pred.source == "roofline:mygpu"
    w = Workload(decode_tokens=256)
    assert pred.predict(FLASH_1B, w) > RooflinePredictor("h100").predict(FLASH_1B, w)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmemory_bandwidth_gbs: 1000\n")
    with pytest.raises(FlashsearchError, match="missing"):
        RooflinePredictor(str(bad))


def test_kernel_census_counts_the_decode_step_per_operator() -> None:
    """The census counts what one StaticDecoder.step dispatches, per operator type; linear in the layer count;
    views and bare allocations are not kernels; the charge column is the roofline's."""
    from flashsearch import kernels
    from flashsearch.proxies.latency.census import HEAD as CENSUS_HEAD
    from flashsearch.proxies.latency.census import decode_step_census, format_census

    one = {r.op: r for r in decode_step_census(full_size_genome(["mamba2", "ffn"]), context=8)}
    two = {r.op: r for r in decode_step_census(full_size_genome(["mamba2", "ffn"] * 2), context=8)}
    assert set(one) == {"mamba2", "ffn", CENSUS_HEAD}
    for op in ("mamba2", "ffn"):
        assert two[op].kernels == 2 * one[op].kernels > 0
        assert one[op].charged == kernels.decode_cost(full_size_genome(["mamba2", "ffn"]), op, 8).launches
    names = {name for r in one.values() for name, _ in r.top}
    assert not any(n.startswith(("aten.view", "aten.empty", "aten.transpose")) for n in names)
    assert "aten.linear" in dict(one["ffn"].top)                         # gate/up and down projections
    assert "| total |" in format_census(list(one.values()))
