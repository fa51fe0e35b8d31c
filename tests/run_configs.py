"""Run configs for tests that drive the search loop directly (search/driver.py run_search)."""

from __future__ import annotations

from typing import Any

from flashsearch.config import BudgetConfig, Ladder, RayConfig, RunConfig, SearchConfig


def run_config(trials: int, workers: int = 1, *, address: str | None = "local", retries: int = 0,
               ladder: Ladder | None = None, num_cpus_per_trial: float = 1.0, num_gpus_per_trial: float = 0.0,
               **search: Any) -> RunConfig:
    """A RunConfig for `trials` candidates, `workers` in flight, in-process workers by default (address="local"),
    no retries unless asked; `ladder` switches multi-fidelity on; other keywords are SearchConfig fields."""
    budget = BudgetConfig() if ladder is None else BudgetConfig(tokens=ladder.tokens[-1], rungs=list(ladder.tokens),
                                                                eta=ladder.eta)
    return RunConfig(search=SearchConfig(trials=trials, workers=workers, retries=retries,
                                         fidelity="single" if ladder is None else "multi", **search),
                     ray=RayConfig(address=address, num_cpus_per_trial=num_cpus_per_trial,
                                   num_gpus_per_trial=num_gpus_per_trial),
                     budget=budget)
