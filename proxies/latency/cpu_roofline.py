"""Fit a roofline device profile to measured CPU decode latencies (how tables/roofline_cpu.yaml was made)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload


def roofline_terms(genome: Genome, workload: Workload, dtype_bytes: int = 4) -> np.ndarray:
    """[bytes, flops, launches] of the whole decode (all steps, layers and head), as the roofline counts them."""
    from flashsearch.proxies.latency.roofline import _cost_table

    n, d, v = workload.decode_tokens, genome.d_model, genome.vocab_size
    total = np.zeros(3)
    for op in dict.fromkeys(genome.layer_types):
        t = _cost_table(genome, op, workload.prompt_len, n, False)             # [N, 5] per layer
        nbytes = (t[:, 0] + t[:, 1] + t[:, 2]) * dtype_bytes
        total += genome.count(op) * np.array([nbytes.sum(), t[:, 3].sum(), t[:, 4].sum()])
    head_bytes = (2 * d + d + 2 * d + v * d + v + v) * dtype_bytes              # as RooflinePredictor's head
    total += n * np.array([head_bytes, 2.0 * v * d, 4.0])
    return total


def calibrate_cpu_roofline(rows: Sequence[tuple[Genome, Workload, float]]) -> dict[str, float]:
    """Least-squares (non-negative, relative error) fit of seconds = bytes / BW + flops / F + launches * t_l.

    The roofline takes max(memory, compute) per kernel; on a CPU at small width both are tiny next to the
    per-kernel (per-op dispatch) cost, so the sum is a fine approximation for the fit.
    """
    from scipy.optimize import nnls

    x = np.stack([roofline_terms(g, w) for g, w, _ in rows])
    y = np.array([s for _, _, s in rows])
    scale = x.max(axis=0)
    coef, _ = nnls((x / scale) / y[:, None], np.ones(len(y)))
    inv_bw, inv_f, t_launch = coef / scale
    return {"memory_bandwidth_gbs": (1.0 / inv_bw / 1e9) if inv_bw > 0 else float("inf"),
            "fp32_tflops": (1.0 / inv_f / 1e12) if inv_f > 0 else float("inf"),
            "launch_overhead_us": t_launch * 1e6,
            "fit_mape": float(np.mean(np.abs((x @ (coef / scale)) - y) / y))}


__all__ = ["roofline_terms", "calibrate_cpu_roofline"]
