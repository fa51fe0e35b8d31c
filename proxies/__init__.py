"""flashsearch.proxies: the objective plug-ins (latency predictors and quality proxies) shipped with flashsearch.

A YAML `_target_` may name a class by its short name (SHORT_NAMES) or by any dotted path; anything with
`predict(genome, workload)` / `evaluate(genome, budget)` works (see base.py).
"""

from __future__ import annotations

from .base import Budget, LatencyEstimate, LatencyPredictor, QualityProxy, QualityResult, Workload, latency_source
from .corpus import ByteCorpus, WindowSampler, load_corpus
from .devices import DeviceProfile, known_devices, load_device
from .measured import MeasuredPredictor
from .roofline import OpLatency, RooflinePredictor, format_breakdown
from .short_train import ShortTrain

SHORT_NAMES: dict[str, str] = {
    "roofline": "flashsearch.proxies.roofline.RooflinePredictor",
    "measured": "flashsearch.proxies.measured.MeasuredPredictor",
    "short_train": "flashsearch.proxies.short_train.ShortTrain",
}

__all__ = [
    "SHORT_NAMES", "Budget", "ByteCorpus", "DeviceProfile", "LatencyEstimate", "LatencyPredictor",
    "MeasuredPredictor", "OpLatency", "QualityProxy", "QualityResult", "RooflinePredictor", "ShortTrain",
    "WindowSampler", "Workload", "format_breakdown", "known_devices", "latency_source", "load_corpus", "load_device",
]
