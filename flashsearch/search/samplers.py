"""The sampler a config asks for: aging evolution (ours) or one of Optuna's baselines over the same space."""

from __future__ import annotations

from typing import Any

from flashsearch.config import RunConfig
from flashsearch.search.latency_target import LatencyTarget
from flashsearch.space import SearchSpace


def make_sampler(cfg: RunConfig, space: SearchSpace, constraint: LatencyTarget | None = None) -> Any:
    """constraint: the run's latency target (None = Pareto mode). Aging evolution solves every candidate's width
    with it. The baselines see the same constraint through Optuna: the driver sets each trial's constraint value
    (latency - target, Trial.set_constraint), which NSGA-II and TPE use to prefer feasible trials (Optuna 5's
    replacement for constraints_func); random search ignores it by design."""
    s = cfg.search
    if s.sampler != "aging":
        baseline = _baseline(cfg)
        if s.fidelity == "multi":  # one trial per candidate, as under single fidelity (search/rungs.py)
            from flashsearch.search.rungs import ScreeningOnly

            return ScreeningOnly(baseline)
        return baseline
    from flashsearch.search.aging import AgingEvolutionSampler

    return AgingEvolutionSampler(space, population=s.population, sample_size=s.sample_size,
                                 target_latency=s.target_latency, seed=cfg.seed,
                                 children_per_ask=s.children_per_ask,
                                 latency_fn=None if constraint is None else constraint.latency)


def _baseline(cfg: RunConfig) -> Any:
    import optuna

    s = cfg.search
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population, seed=cfg.seed)
    return optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True, n_startup_trials=s.population)


__all__ = ["make_sampler"]
