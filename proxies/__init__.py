"""flashsearch.proxies: the objective plug-ins shipped with flashsearch.

  base.py    the two protocols (LatencyPredictor, QualityProxy) and the values they exchange (Workload, Budget, ...)
  quality/   quality proxies: short_train and the byte corpus it trains on
  latency/   latency predictors (roofline, measured, lut, learned), device profiles, the profiler, the validation

Importing this package, or `flashsearch.proxies.base`, does not import torch: the names below load their module
on first use (PEP 562), so a plug-in author can implement the protocols without paying for the model code.
A YAML `_target_` names a shipped plug-in by its short name (flashsearch.builders) or any class by dotted path.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Budget, LatencyPredictor, QualityProxy, QualityResult, Workload, latency_source

# name -> module that defines it, imported on first attribute access.
_LAZY: dict[str, str] = {
    "ShortTrain": "flashsearch.proxies.quality.short_train",
    "ByteCorpus": "flashsearch.proxies.quality.corpus",
    "WindowSampler": "flashsearch.proxies.quality.corpus",
    "load_corpus": "flashsearch.proxies.quality.corpus",
    "RooflinePredictor": "flashsearch.proxies.latency.roofline",
    "OpLatency": "flashsearch.proxies.latency.roofline",
    "format_breakdown": "flashsearch.proxies.latency.roofline",
    "DeviceProfile": "flashsearch.proxies.latency.devices",
    "known_devices": "flashsearch.proxies.latency.devices",
    "load_device": "flashsearch.proxies.latency.devices",
    "MeasuredPredictor": "flashsearch.proxies.latency.measured",
    "LutPredictor": "flashsearch.proxies.latency.lut",
    "LearnedPredictor": "flashsearch.proxies.latency.learned",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Budget", "LatencyPredictor", "QualityProxy", "QualityResult", "Workload", "latency_source", *_LAZY]
