"""flashsearch.proxies: the objective plug-ins shipped with flashsearch.

  base.py      the two protocols (LatencyPredictor, QualityProxy) and the values they exchange (Workload, Budget, ...)
  registry.py  the shipped plug-ins by short name (what `_target_: roofline` means); any other class by dotted path
  quality/     quality proxies: short_train and the byte corpus it trains on
  latency/     latency predictors (roofline, measured, lut, learned), device profiles, the profiler, the validation

Importing this package, or `flashsearch.proxies.base`, does not import torch: the names below load their module
on first use (PEP 562), so a plug-in author can implement the protocols without paying for the model code.
"""

from __future__ import annotations

from flashsearch.lazy import lazy_exports

from .base import Budget, LatencyPredictor, QualityProxy, QualityResult, Workload, latency_source
from .registry import class_modules

# name -> module that defines it, imported on first attribute access: every registered plug-in class, and the
# helpers that go with them.
_LAZY: dict[str, str] = {
    **class_modules(),
    "ByteCorpus": "flashsearch.proxies.quality.corpus",
    "WindowSampler": "flashsearch.proxies.quality.corpus",
    "load_corpus": "flashsearch.proxies.quality.corpus",
    "OpLatency": "flashsearch.proxies.latency.roofline",
    "format_breakdown": "flashsearch.proxies.latency.roofline",
    "DeviceProfile": "flashsearch.proxies.latency.devices",
    "known_devices": "flashsearch.proxies.latency.devices",
    "load_device": "flashsearch.proxies.latency.devices",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = ["Budget", "LatencyPredictor", "QualityProxy", "QualityResult", "Workload", "latency_source", *_LAZY]
