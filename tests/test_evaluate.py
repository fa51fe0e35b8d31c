"""One candidate through the evaluator a worker runs: the trial's metrics say how it was trained."""

from __future__ import annotations

from factories import HYBRID_YAML, TINY_RUN, full_size_genome
from flashsearch.config import load_config
from flashsearch.evaluate import CandidateEvaluator


def test_metrics_record_the_path_every_operator_ran_its_precision_and_throughput():
    genome = full_size_genome(("deltanet", "ffn", "mamba2", "ffn", "attention", "ffn"), d_model=1024)
    out = CandidateEvaluator(load_config(HYBRID_YAML, TINY_RUN))(genome.to_json())
    metrics = out["metrics"]
    assert set(metrics["fast_path"]) >= {"deltanet", "mamba2", "attention"}          # no silent fallback
    assert all(isinstance(path, str) and path for path in metrics["fast_path"].values())
    assert metrics["precision"] == "fp32" and metrics["tokens_per_s"] > 0
    assert metrics["mfu"] is None                                                   # no peak profile for a CPU
