"""Latency-target mode's constraint (the paper's setting): every trained candidate sits at the widest width whose
predicted latency meets the target; a candidate no width can make feasible is not trained.

Predictions are memoised by genome id: solving a width tries up to len(widths) genomes per candidate, and the
sampler solves many candidates per ask (mutations that turn out to be duplicates or infeasible), so without the
memo the controller would call the predictor ~100 times per trial.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flashsearch.genome import Genome
from flashsearch.space import SearchSpace

# The constraint's name in Optuna (Trial.set_constraint("latency", latency - target); <= 0 = feasible). Optuna's
# NSGA-II and TPE read it from every finished trial and prefer feasible ones.
CONSTRAINT_KEY = "latency"


def predicted_seconds(predictor: Any, workload: Any, genome: Genome) -> float:
    """A latency predictor's answer as a plain function of the genome (bind it with functools.partial: unlike a
    lambda, the result pickles, and so does every sampler holding it)."""
    return float(predictor.predict(genome, workload))


class LatencyTarget:
    def __init__(self, space: SearchSpace, latency_fn: Callable[[Genome], float], target: float) -> None:
        self.space = space
        self.latency_fn = latency_fn
        self.target = float(target)
        self._memo: dict[str, float] = {}
        self.calls = 0  # predictor calls made (memo misses), for tests and overhead checks

    def latency(self, genome: Genome) -> float:
        seconds = self._memo.get(genome.id)
        if seconds is None:
            self.calls += 1
            seconds = self._memo[genome.id] = float(self.latency_fn(genome))
        return seconds

    def meets(self, params: Mapping[str, Any]) -> bool:
        return self.latency(self.space.decode(dict(params))) <= self.target

    def widest(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """`params` at the widest width whose predicted latency meets the target; None if no width does."""
        for width in sorted(self.space.widths, reverse=True):
            candidate = self.space.repair(self.space.with_width(dict(params), width))
            if self.meets(candidate):
                return candidate
        return None

    def widest_seeds(self, seeds: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        """Each seed at the widest width meeting the target, like every other candidate; a seed that no width
        makes feasible is skipped (with a note), not trained."""
        out, notes = [], []
        for i, params in enumerate(seeds):
            solved = self.widest(params)
            if solved is None:
                notes.append(f"seed {i} misses search.target_latency={self.target:g} s at every width; skipped")
            else:
                out.append(solved)
        return out, notes


__all__ = ["LatencyTarget", "CONSTRAINT_KEY", "predicted_seconds"]
