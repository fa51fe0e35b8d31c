"""The shipped objective plug-ins by short name: the one list that a YAML `_target_: roofline`, the builders and
the lazy names of `flashsearch.proxies` all read.

A new built-in latency predictor or quality proxy is its module plus one line here. Anything not listed is named
by its dotted path (`_target_: mypkg.module.MyPredictor`) and needs no line anywhere. Only strings live here, so
reading the registry imports no plug-in (and no torch).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

LATENCY_PREDICTORS: Mapping[str, str] = MappingProxyType({
    "roofline": "flashsearch.proxies.latency.roofline.RooflinePredictor",
    "measured": "flashsearch.proxies.latency.measured.MeasuredPredictor",
    "lut": "flashsearch.proxies.latency.lut.LutPredictor",
    "learned": "flashsearch.proxies.latency.learned.LearnedPredictor",
})

QUALITY_PROXIES: Mapping[str, str] = MappingProxyType({
    "short_train": "flashsearch.proxies.quality.short_train.ShortTrain",
})


def class_modules() -> dict[str, str]:
    """Class name -> its module, for every registered plug-in (the names `flashsearch.proxies` exports lazily)."""
    out: dict[str, str] = {}
    for path in (*LATENCY_PREDICTORS.values(), *QUALITY_PROXIES.values()):
        module, _, name = path.rpartition(".")
        if out.setdefault(name, module) != module:  # two plug-ins with one class name would shadow each other
            raise ValueError(f"proxies.registry: class name {name!r} is registered from {out[name]} and {module}")
    return out


__all__ = ["LATENCY_PREDICTORS", "QUALITY_PROXIES", "class_modules"]
