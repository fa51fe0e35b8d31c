"""The kernel census of the CUDA decode step (census.py with fused=True, as experiments/kernel_census runs it),
counted on CPU: the fused path really runs (every recurrent layer launches its declared kernels once, nothing
falls back to a torch step), Flash-1B stays within 2x of what the roofline charges, and the committed results are
this code's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flashsearch.builders import load_genome
from flashsearch.proxies.latency.census import decode_step_census

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "kernel_census" / "results" / "kernel_census.md"


@pytest.fixture(scope="module")
def flash_1b() -> dict:
    genome = load_genome(ROOT / "search_spaces" / "reference" / "nemotron_flash_1b.yaml")
    return {r.op: r for r in decode_step_census(genome, 64, fused=True, warmup_steps=1, top=8)}  # the study's count


def test_every_recurrent_layer_launches_its_fused_step_kernels(flash_1b: dict) -> None:
    genome = load_genome(ROOT / "search_spaces" / "reference" / "nemotron_flash_1b.yaml")
    top = {op: dict(r.top) for op, r in flash_1b.items()}
    assert top["mamba2"]["kernel.selective_state_update"] == genome.count("mamba2")   # charged, and now called
    assert top["mamba2"]["kernel.causal_conv1d_update"] == genome.count("mamba2")
    assert top["deltanet"]["kernel.fused_recurrent_delta_rule"] == genome.count("deltanet")
    # The torch step's signature ops are gone: no softplus / exp of the SSM step, no l2norm's rsqrt, no residual add.
    assert "aten.softplus" not in top["mamba2"] and "aten.rsqrt" not in top["deltanet"]
    assert all("aten.add" not in t for t in top.values()) and top["ffn"]["kernel.rms_norm"] == genome.count("ffn")


def test_flash_1b_decode_step_is_within_twice_the_roofline_charge(flash_1b: dict) -> None:
    kernels = sum(r.kernels for r in flash_1b.values())
    charged = sum(r.charged for r in flash_1b.values())
    assert charged == 122
    assert kernels <= 2 * charged, kernels
    # gate|up GEMM, swiglu, down GEMM, residual add fused with the next norm: what the roofline charges.
    assert flash_1b["ffn"].kernels == flash_1b["ffn"].charged == 4 * flash_1b["ffn"].layers


def test_committed_results_match_the_census(flash_1b: dict) -> None:
    text = RESULTS.read_text()
    row = re.search(r"^\| nemotron_flash_1b \| (\d+) \| (\d+) \|", text, re.M)
    assert row is not None, "results lack the Flash-1B summary row"
    assert int(row.group(1)) == sum(r.kernels for r in flash_1b.values()), \
        "stale results: rerun `python -m experiments run kernel_census`"
    assert int(row.group(2)) == sum(r.charged for r in flash_1b.values())
