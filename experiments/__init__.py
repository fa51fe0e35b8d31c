"""The study suite: one folder per study (settings.yaml, run.py, results/), the shared library in
experiments/lib, and one entry point: `python -m experiments list | show | run | check` (see README.md here)."""
