"""Latency predictors and what they are made from.

  roofline.py  analytic bytes/FLOPs/kernel launches per decode step, with a device profile (devices/*.yaml)
  measured.py  real timing of the decode loop (CUDA graphs + events on GPU, wall clock on CPU)
  static_decoder.py  the capturable decode loop it times (the operators' own steps over static buffers)
  throughput.py  maximum-batch decode throughput (batch search + timing)
  lut.py       per-operator lookup table profiled on a device (tables/*.json, written by `flashsearch profile`)
  learned.py   a regressor fitted on measured decode latencies
  devices.py   device profiles for the roofline (devices/*.yaml); cpu_roofline.py fits one to CPU measurements
  profile.py   the profiler that writes LUT tables (`flashsearch profile`)
  sample.py    small genomes from a space and their measured CPU decode latency
  validate.py  predictors scored against measurements; validate_command.py: `flashsearch latency validate`

Submodules are imported directly (`from flashsearch.proxies.latency.lut import LutPredictor`); this package
imports nothing heavy itself.
"""
