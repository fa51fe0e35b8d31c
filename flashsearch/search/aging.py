"""Aging evolution (Algorithm 1 of Nemotron-Flash) as a stateless Optuna sampler.

Every decision is derived from the study on each call: the population is the newest P COMPLETE trials
(ordered by completion time), a tournament of S members picks the parent, the child is the parent with exactly
one factor mutated, then repaired. The only memory is a cache of finished trials (which never change), so a
resumed study, or a second sampler instance on the same storage, makes exactly the choices the first would.
Genomes already in the study (any state, failed included) are not proposed again while new ones can be found.

Objectives are the study's values: values[0] = loss, values[1] = latency in seconds, each minimized or maximized
as the study's directions say (flashsearch's own studies minimize both). A single-objective study gets classic
regularized evolution (the tournament's best value is the parent); latency-target mode needs (minimize, minimize).
Trials without the space's parameters (another sampler's) are skipped, never parents. Optuna's sampler contract
holds (tests/test_sampler_contract.py): parameters outside the space, partial fixing and enqueued partial trials get
independent random draws, n_jobs > 1 asks share the cached view under a lock, and the sampler pickles.

The parts: population.py (the study as a population, the parent selection rules), proposal.py (mutate, dedup,
solve the width), child_ranker.py (with children_per_ask = K > 1: train the child a ridge predicts best).
What the sampler decided for a trial is written to its system attributes (search/attrs.py AGING_*).
"""

from __future__ import annotations

import math
import random
import threading
from typing import Any, Callable, Mapping

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.search import attrs
from flashsearch.search.child_ranker import ChildRanker
from flashsearch.search.latency_target import LatencyTarget
from flashsearch.search.population import (Member, PopulationView, dominates, select_parent_constrained,
                                           select_parent_pareto)
from flashsearch.search.proposal import Proposer
from flashsearch.search.rungs import is_promotion
from flashsearch.space import SearchSpace


class AgingEvolutionSampler(BaseSampler):
    """Aging evolution over a SearchSpace: random until the population is full, then tournament + mutation.

    target_latency set  -> constrained mode (the paper): parent = lowest loss meeting the target; width is not
                           mutated but solved: the largest width whose `latency_fn` meets the target.
    target_latency None -> Pareto mode: parent = the tournament member best under a random Chebyshev weighting of
                           the two objectives, normalised over the population (select_parent_pareto).
    seed: each trial's choices come from an RNG seeded by (seed, trial number), so the same study state gives
    the same child whichever sampler instance (or process) asks.
    children_per_ask: K > 1 mutates K distinct new children and trains the one a ridge fitted to the completed
    trials predicts best (child_ranker.py); K = 1 is plain Algorithm 1.
    """

    def __init__(
        self,
        space: SearchSpace,
        population: int,
        sample_size: int,
        target_latency: float | None = None,
        seed: int | None = None,
        latency_fn: Callable[[Genome], float] | None = None,
        max_dedup_tries: int = 20,
        children_per_ask: int = 1,
    ) -> None:
        if population < 1:
            raise FlashsearchError(f"search.population must be >= 1, got {population}")
        if not 1 <= sample_size <= population:
            raise FlashsearchError(f"search.sample_size={sample_size} must be in [1, search.population="
                                   f"{population}]; lower it or raise the population")
        if target_latency is not None and not (math.isfinite(target_latency) and target_latency > 0):
            raise FlashsearchError(f"target latency must be a positive number of seconds, got {target_latency}")
        if children_per_ask < 1:
            raise FlashsearchError(f"search.children_per_ask must be >= 1, got {children_per_ask}")
        self.space = space
        self.population = int(population)
        self.sample_size = int(sample_size)
        self.target_latency = None if target_latency is None else float(target_latency)
        self.seed = seed
        self.latency_fn = latency_fn
        self.children_per_ask = int(children_per_ask)
        # Target mode with a predictor: memoised predictions and the widest feasible width (search/latency_target.py).
        self.constraint = (LatencyTarget(space, latency_fn, self.target_latency)
                           if self.target_latency is not None and latency_fn is not None else None)
        self.proposer = Proposer(space, self.constraint, max_dedup_tries)
        self.ranker = ChildRanker(getattr(space, "operators", ()),
                                  None if self.target_latency is not None else latency_fn)
        self._entropy = random.Random()  # only used when seed is None
        # What finished trials say, per study. Finished trials never change, so it cannot alter a decision (a
        # fresh instance decides the same); it only keeps the per-call cost flat as studies grow. Asks from
        # several threads (n_jobs > 1) share it under the lock.
        self._views: dict[tuple[int, int], PopulationView] = {}
        self._lock = threading.Lock()

    # ---- Optuna hooks -------------------------------------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}  # enqueued trial (seed / retry): its params are given
        # Only what was asked for: a wrapper (PartialFixedSampler) removes the parameters it fixes itself.
        proposal = self._propose(study, trial)
        return {name: value for name, value in proposal.items() if name in search_space}

    def _propose(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        signs = self._signs(study)
        rng = self._rng(trial.number)
        with self._lock:
            view = self._view(study, signs)
            open_trials = [t for t in view.open_trials() if t.number != trial.number]
            members = view.newest(self.population)
            n_alive = view.n_alive_finished
            seen = set(view.finished_ids)
        new_open = [t for t in open_trials if not is_promotion(t)]  # promotions are no new candidates
        # Every genome already in the study (failed ones too: re-proposing them would fail again).
        seen |= {gid for t in open_trials if (gid := self._genome_id(t)) is not None}
        if n_alive + len(new_open) < self.population or not members:
            # Seeding: running and waiting trials count, so W parallel workers do not over-seed.
            params, _ = self.proposer.random_unique(rng, seen)
            self._record(study, trial, {attrs.AGING_ORIGIN: "random"})
            return params

        tournament = rng.sample(members, min(self.sample_size, len(members)))
        # Multi-fidelity: the tournament is compared at the highest rung all its members reached.
        with self._lock:
            pool, population = view.members(tournament, members)
        if self.target_latency is not None:
            parent = select_parent_constrained(pool, self.target_latency)
        else:
            parent = select_parent_pareto(pool, rng, population)

        parent_params = dict(next(t for t in tournament if t.number == parent.number).params)
        children = self.proposer.children(parent_params, rng, seen, self.children_per_ask,
                                          mutate_width=self.target_latency is None)
        if children:
            weight = None if self.target_latency is not None else rng.random()
            child, factor, _ = children[self._rank(children, view, weight if len(signs) > 1 else None)]
            self._record(study, trial, {attrs.AGING_ORIGIN: "mutation", attrs.AGING_PARENT: parent.number,
                                        attrs.AGING_MUTATION: factor})
            return child
        # Every mutation of this parent is already in the study or infeasible: explore instead (re-proposing a
        # duplicate would only replay its cached result and burn a trial).
        fresh, _ = self.proposer.random_unique(rng, seen)
        self._record(study, trial, {attrs.AGING_ORIGIN: "random-dedup", attrs.AGING_PARENT: parent.number})
        return fresh

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only reached for parameters outside the space (or missing from an enqueued trial): plain random, each
        # parameter on a stream of its own (one shared seed would give every parameter the same draw).
        seed = random.Random(f"{self._rng(trial.number).random()}/{param_name}").randrange(2**31)
        return RandomSampler(seed=seed).sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._entropy = random.Random()

    # ---- helpers ------------------------------------------------------------------------------------------
    def _rng(self, number: int) -> random.Random:
        if self.seed is None:
            return random.Random(self._entropy.getrandbits(64))
        return random.Random(f"aging/{self.seed}/{number}")  # str seeds hash with sha512: stable across runs

    def _signs(self, study: Study) -> tuple[float, ...]:
        """+1 per minimized objective, -1 per maximized one; refuses what aging evolution cannot serve."""
        directions = study.directions
        if len(directions) > 2:
            raise ValueError(f"aging evolution serves one objective (loss) or two (loss, latency); this study has "
                             f"{len(directions)}")
        signs = tuple(-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions)
        if self.target_latency is not None and signs != (1.0, 1.0):
            raise ValueError("latency-target mode needs a study with directions ['minimize', 'minimize'] (loss, "
                             "latency in seconds); drop target_latency for other studies")
        return signs

    def _rank(self, children: list[tuple[dict[str, Any], str, Genome]], view: PopulationView,
              weight: float | None) -> int:
        """Which of the children to train (child_ranker.py); 0 when there is one."""
        if len(children) == 1:
            return 0
        with self._lock:
            trained = view.newest(len(view.complete))  # every completed, non-replayed trial
        return self.ranker.pick(
            [genome for _, _, genome in children],
            [(self._genome_id(t) or f"trial{t.number}",
              lambda t=t: self.space.decode(self.space.repair(dict(t.params))),
              *view.objectives(t)) for t in trained],
            weight)

    def _genome_id(self, t: FrozenTrial) -> str | None:
        """The driver's genome_id attribute, else decoded from the (enqueued) params; None if undecodable."""
        gid = t.user_attrs.get(attrs.GENOME_ID)
        if gid is not None:
            return gid
        params = t.system_attrs.get("fixed_params") if t.state == TrialState.WAITING else t.params
        try:
            return self.space.decode(self.space.repair(dict(params or {}))).id
        except (KeyError, ValueError, TypeError, FlashsearchError):
            return None  # params from another space or half-written: nothing to dedup against

    def _view(self, study: Study, signs: tuple[float, ...] = (1.0, 1.0)) -> PopulationView:
        """The study's population view, brought up to date (the caller holds the lock)."""
        trials = study._get_trials(deepcopy=False, states=None)  # the one storage read per call
        key = (id(study._storage), study._study_id)
        view = self._views.get(key)
        if view is None or view.signs != signs or not view.update(trials, self._genome_id):
            view = PopulationView(study._storage, self.space.distributions(), signs)
            view.update(trials, self._genome_id)
            self._views[key] = view
        return view

    # ---- pickling (Optuna pickles samplers for some storages and for process-based n_jobs) --------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock"] = None      # a lock does not pickle; the cache is rebuilt from the study on the next ask
        state["_views"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @staticmethod
    def _record(study: Study, trial: FrozenTrial, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            study._storage.set_trial_system_attr(trial._trial_id, key, value)


__all__ = ["AgingEvolutionSampler", "Member", "dominates", "select_parent_constrained", "select_parent_pareto"]
