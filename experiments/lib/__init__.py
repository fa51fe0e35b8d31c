"""The study library (not part of the installed package): settings files, result provenance, cache keys, the
resumable training-job pool, multi-fidelity ladders, rank agreement, the depth-width law and the surrogate
objective the searcher benchmarks share. Product code never imports it."""
