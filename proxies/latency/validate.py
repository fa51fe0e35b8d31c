"""Score latency predictors against measured decode latencies: Kendall tau and Spearman rho (ranking, what a
search needs), MAPE (absolute accuracy) and the worst genomes. The command around this is validate_command.py.

Validation times decoding on this machine's CPU. A predictor class says how to build it for that, with no line
here for any one predictor:
  for_validation(ctx)    optional classmethod returning the predictor to score (ctx: ValidationContext); without
                         it the class is built as a run builds it, with device="cpu" when it takes a device
  fits_on_measurements   optional class attribute, default False: True measures a separate training split for it
                         (ctx.train: other genomes, none shared with the validation set), so a fitted predictor
                         is never scored on its own training data; its n_train and train_mape are reported
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ValidationContext:
    """What a validation run offers the predictors it builds (see the module docstring for how they use it)."""

    workload: Workload
    table: str | None                    # --table: the LUT table to score (None: the shipped CPU table)
    roofline_device: str                 # --roofline-device: `cpu` (the shipped CPU fit) or a profile path
    train: list[tuple[Genome, float]]    # (genome, measured seconds) of the training split; empty if none measured
    out: Path | None                     # the --out folder, where a fitted predictor saves itself
    measured_on: str | None = None       # the machine the measurements come from (recorded by a fitted predictor)


def predictor_class(name: str) -> type:
    """The class a --predictor names: a registered short name or a dotted path."""
    from flashsearch.builders import LATENCY_PREDICTORS, resolve_target

    return resolve_target(name, LATENCY_PREDICTORS, "latency")


def fits_on_measurements(names: Sequence[str]) -> bool:
    """Whether any of these predictors is fitted on measurements, so validation must measure a training split."""
    return any(getattr(predictor_class(n), "fits_on_measurements", False) for n in names)


def build_predictor(name: str, ctx: ValidationContext) -> Any:
    """The predictor to score: its class's `for_validation(ctx)` when it has one, else the class built the way a
    run builds it, for the CPU (`device="cpu"` if its constructor takes a device)."""
    from flashsearch.builders import LATENCY_PREDICTORS, instantiate

    hook = getattr(predictor_class(name), "for_validation", None)
    predictor = hook(ctx) if hook is not None else instantiate(name, LATENCY_PREDICTORS, "latency", device="cpu")
    if not callable(getattr(predictor, "predict", None)):
        raise FlashsearchError(f"latency: {type(predictor).__name__} has no predict(genome, workload) method; "
                               "see the LatencyPredictor protocol in flashsearch.proxies.base")
    return predictor


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
        if getattr(type(pred), "fits_on_measurements", False):
            results[name]["n_train"] = len(ctx.train)
            results[name]["train_mape"] = getattr(pred, "train_mape", None)
    return results


__all__ = ["rank_stats", "ValidationContext", "predictor_class", "fits_on_measurements", "build_predictor",
           "validate"]
