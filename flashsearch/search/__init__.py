"""Search: the ask/evaluate/tell driver over an Optuna study, the aging-evolution sampler, multi-fidelity rungs.

  driver.py        the loop: ask a candidate, evaluate it on a worker (backends.py), tell the result
  attrs.py         the names of everything written into the study
  samplers.py      the sampler a config names (short name or `_target_`)
  aging.py         aging evolution as an Optuna sampler, built from population.py (the study as a population),
                   proposal.py (mutate, dedup, width solve) and child_ranker.py (optional ridge over K children)
  rungs.py         multi-fidelity: ladder promotions (ASHA-style)
  failures.py, recovery.py, results.py, summary.py, lock.py, signals.py, storage.py, latency_target.py

The names below load on first use (PEP 562), so importing one small module of this package (e.g. attrs) does not
import the whole engine.
"""

from __future__ import annotations

from flashsearch.lazy import lazy_exports

_LAZY = {
    "AgingEvolutionSampler": "flashsearch.search.aging",
    "run_search": "flashsearch.search.driver",
    "Hooks": "flashsearch.search.driver",
    "SearchSummary": "flashsearch.search.summary",
    "LOCAL": "flashsearch.search.backends",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = list(_LAZY)
