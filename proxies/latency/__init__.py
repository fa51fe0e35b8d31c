"""Latency predictors and what they are made from.

  roofline.py  analytic bytes/FLOPs/kernel launches per decode step, with a device profile (devices/*.yaml)
  measured.py  real timing of the decode loop (CUDA graphs + events on GPU, wall clock on CPU)
  lut.py       per-operator lookup table profiled on a device (tables/*.json, written by `flashsearch profile`)
  learned.py   a regressor fitted on measured decode latencies
  profile.py   the profiler that writes LUT tables; devices.py: device profiles; validate.py: predictor vs measured

Submodules are imported directly (`from flashsearch.proxies.latency.lut import LutPredictor`); this package
imports nothing heavy itself.
"""
