"""The sampler a config names, by the same rule as every plug-in: a short name or a `_target_`.

    search:
      sampler: aging                                   # shipped: aging | random | nsga2 | tpe
      sampler: {_target_: tpe, n_ei_candidates: 48}    # a shipped one with options of its own
      sampler: {_target_: my_pkg.samplers.MySampler, temperature: 0.5}   # any optuna.samplers.BaseSampler

Options in the mapping go to the class's constructor. Settings the run already has are passed too, where the
constructor takes them and the mapping does not set them: `seed` (the run's seed) and `space` (the SearchSpace)
for any class; the shipped ones also get their search.* settings (population, sample_size, ...).

Under multi-fidelity every sampler but aging evolution (which compares candidates at equal rungs itself) is
wrapped so that it learns from each candidate's screening trial only (search/rungs.py ScreeningOnly).
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import BaseSampler

from flashsearch.builders import instantiate, spec_of
from flashsearch.config import RunConfig
from flashsearch.errors import FlashsearchError
from flashsearch.search.latency_target import LatencyTarget
from flashsearch.space import SearchSpace

SAMPLERS = {
    "aging": "flashsearch.search.aging.AgingEvolutionSampler",
    "random": "optuna.samplers.RandomSampler",
    "nsga2": "optuna.samplers.NSGAIISampler",
    "tpe": "optuna.samplers.TPESampler",
}


def _settings(name: str, cfg: RunConfig, space: SearchSpace, constraint: LatencyTarget | None) -> dict[str, Any]:
    """What a shipped sampler takes from the run's config (search.population is NSGA-II's population and TPE's
    random start as well as aging evolution's population)."""
    s = cfg.search
    if name == "aging":
        return {"space": space, "population": s.population, "sample_size": s.sample_size,
                "target_latency": s.target_latency, "seed": cfg.seed, "children_per_ask": s.children_per_ask,
                "latency_fn": None if constraint is None else constraint.latency}
    if name == "nsga2":
        return {"population_size": s.population, "seed": cfg.seed}
    if name == "tpe":
        return {"seed": cfg.seed, "multivariate": True, "n_startup_trials": s.population}
    return {"seed": cfg.seed}


def build_sampler(cfg: RunConfig, space: SearchSpace, constraint: LatencyTarget | None = None) -> BaseSampler:
    """constraint: the run's latency target (None = Pareto mode). Aging evolution solves every candidate's width
    with it. Other samplers see the same constraint through Optuna: the driver sets each trial's constraint value
    (latency - target, Trial.set_constraint), which NSGA-II and TPE use to prefer feasible trials; random search
    ignores it by design."""
    name, _ = spec_of(cfg.search.sampler)
    context = _settings(name, cfg, space, constraint) if name in SAMPLERS else {"seed": cfg.seed, "space": space}
    sampler = instantiate(cfg.search.sampler, SAMPLERS, "search.sampler", **context)
    if not isinstance(sampler, BaseSampler):
        raise FlashsearchError(f"search.sampler: {type(sampler).__name__} is not an Optuna sampler; subclass "
                               "optuna.samplers.BaseSampler (or wrap one)")
    from flashsearch.search.aging import AgingEvolutionSampler

    if cfg.search.fidelity == "multi" and not isinstance(sampler, AgingEvolutionSampler):
        from flashsearch.search.rungs import ScreeningOnly

        return ScreeningOnly(sampler)
    return sampler


__all__ = ["build_sampler", "SAMPLERS"]
