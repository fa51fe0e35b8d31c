"""The sampler a config asks for: aging evolution (ours) or one of Optuna's baselines over the same space."""

from __future__ import annotations

from typing import Any

from flashsearch.config import RunConfig
from flashsearch.space import SearchSpace


def make_sampler(cfg: RunConfig, space: SearchSpace, predictor: Any) -> Any:
    import optuna

    s = cfg.search
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population, seed=cfg.seed)
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True, n_startup_trials=s.population)
    from flashsearch.builders import build_workload
    from flashsearch.search.aging import AgingEvolutionSampler

    workload = build_workload(cfg)
    latency_fn = (lambda g: float(predictor.predict(g, workload))) if s.target_latency is not None else None
    return AgingEvolutionSampler(space, population=s.population, sample_size=s.sample_size,
                                 target_latency=s.target_latency, seed=cfg.seed, latency_fn=latency_fn)


__all__ = ["make_sampler"]
