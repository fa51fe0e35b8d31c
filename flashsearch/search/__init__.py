"""Search: the aging-evolution sampler (baselines are Optuna's own samplers) and the ask/evaluate/tell driver."""

from flashsearch.search.aging import AgingEvolutionSampler
from flashsearch.search.driver import LOCAL, SearchSummary, run_search

__all__ = ["AgingEvolutionSampler", "run_search", "SearchSummary", "LOCAL"]
