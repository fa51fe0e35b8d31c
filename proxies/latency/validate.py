"""Score latency predictors against measured decode latencies: Kendall tau and Spearman rho (ranking, what a
search needs), MAPE (absolute accuracy) and the worst genomes.

`learned` is never scored on its training data: it is fitted on a separate sample of genomes (another seed,
none shared with the validation set) measured the same way. The command around this is validate_command.py.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload, latency_source
from flashsearch.ranking import rank_correlations


def rank_stats(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Kendall tau-b, Spearman rho and mean absolute percentage error of predicted vs measured."""
    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if p.shape != m.shape or p.size < 2:
        raise FlashsearchError("rank statistics need two equally long sequences of at least 2 values")
    if np.any(m <= 0):
        raise FlashsearchError("measured latencies must be positive for MAPE")
    spearman, kendall = rank_correlations(p, m)
    return {"kendall_tau": kendall, "spearman": spearman, "mape": float(np.mean(np.abs(p - m) / m))}


@dataclass
class ValidationContext:
    workload: Workload
    table: str | None
    roofline_device: str
    train: list[tuple[Genome, float]]
    out: Path | None
    measured_on: str | None = None   # the machine the measurements come from (recorded by a fitted `learned`)


def build_predictor(name: str, ctx: ValidationContext) -> Any:
    """A predictor for validation by short name (lut, roofline, learned, measured) or dotted path."""
    if name == "lut":
        from flashsearch.proxies.latency.lut import LutPredictor

        return LutPredictor(table=ctx.table, device="cpu")
    if name == "roofline":
        from flashsearch.proxies.latency.roofline import RooflinePredictor

        device = ctx.roofline_device
        if device == "cpu":  # the shipped CPU fit lives with the other CPU tables, not among the GPU profiles
            device = str(resources.files("flashsearch.proxies.latency").joinpath("tables").joinpath("roofline_cpu.yaml"))
        return RooflinePredictor(device=device, dtype="fp32")  # the CPU measures fp32
    if name == "learned":
        from flashsearch.proxies.latency.learned import LearnedPredictor, Measurement

        if not ctx.train:
            raise FlashsearchError("learned needs training measurements: use --n-train > 2")
        model = LearnedPredictor.fit([Measurement(g, ctx.workload, s, ctx.measured_on) for g, s in ctx.train], device="cpu",
                                     meta={"what": "fitted by flashsearch latency validate on its training split"})
        if ctx.out is not None:
            model.save(ctx.out / "learned_cpu.json")
        return model
    from flashsearch.builders import LATENCY_PREDICTORS, instantiate

    return instantiate({"_target_": name}, LATENCY_PREDICTORS, "latency", device="cpu")


def validate(predictors: Sequence[str], genomes: Sequence[Genome], measured: Sequence[float], ctx: ValidationContext,
             worst: int = 5) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in predictors:
        pred = build_predictor(name, ctx)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = [float(pred.predict(g, ctx.workload)) for g in genomes]
        stats = rank_stats(values, measured)
        err = [(p - m) / m for p, m in zip(values, measured)]
        order = sorted(range(len(genomes)), key=lambda i: -abs(err[i]))[:worst]
        results[name] = {
            "source": latency_source(pred), **stats, "predicted": values,
            "warnings": sorted({str(w.message) for w in caught}),
            "worst": [{"index": i, "pattern": genomes[i].summary(), "d_model": genomes[i].d_model,
                       "measured": measured[i], "predicted": values[i], "rel_error": err[i]} for i in order],
        }
        if name == "learned":
            results[name]["n_train"] = len(ctx.train)
            results[name]["train_mape"] = getattr(pred, "train_mape", None)
    return results


__all__ = ["rank_stats", "ValidationContext", "build_predictor", "validate"]
