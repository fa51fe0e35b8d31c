"""Aging evolution (Algorithm 1 of Nemotron-Flash) as a stateless Optuna sampler.

Every decision is derived from the study on each call: the population is the newest P COMPLETE trials
(ordered by completion time), a tournament of S members picks the parent, the child is the parent with exactly
one factor mutated, then repaired. The only memory is a cache of finished trials (which never change), so a
resumed study, or a second sampler instance on the same storage, makes exactly the choices the first would.
Genomes already in the study (any state, failed included) are not proposed again while new ones can be found.

Objectives are the study's two values: values[0] = loss (minimize), values[1] = latency in seconds (minimize).

What the sampler decided for a trial is written to the trial's system attributes:
    aging:origin    "random" | "mutation" | "random-dedup"  (why the params look the way they do)
    aging:parent    parent trial number (mutations only)
    aging:mutation  the mutated parameter name (mutations only)
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.search.latency_target import LatencyTarget
from flashsearch.search.rungs import candidate_of, is_promotion, rung_of
from flashsearch.space import SearchSpace

ATTR_ORIGIN = "aging:origin"
ATTR_PARENT = "aging:parent"
ATTR_MUTATION = "aging:mutation"

# The driver stores the evaluated genome's id under this user attribute (read here for dedup).
GENOME_ID_ATTR = "genome_id"


@dataclass(frozen=True)
class Member:
    """One population member as the selection rules see it."""

    number: int
    loss: float
    latency: float


# ---- selection rules (pure functions, tested directly) ---------------------------------------------------
def select_parent_constrained(members: Sequence[Member], target_latency: float) -> Member:
    """Lowest loss among members with latency <= target; if none meets it, the lowest-latency member."""
    if not members:
        raise ValueError("empty tournament")
    feasible = [m for m in members if m.latency <= target_latency]
    if feasible:
        return min(feasible, key=lambda m: (m.loss, m.latency, m.number))
    return min(members, key=lambda m: (m.latency, m.loss, m.number))


def dominates(a: Member, b: Member) -> bool:
    return a.loss <= b.loss and a.latency <= b.latency and (a.loss < b.loss or a.latency < b.latency)


def select_parent_pareto(members: Sequence[Member], rng: random.Random | None = None,
                         population: Sequence[Member] | None = None) -> Member:
    """Pareto mode: the tournament member that minimises a random Chebyshev scalarisation of (loss, latency).

    Each call draws a weight w ~ U(0, 1) (w = 0.5 without `rng`) and scores a member by
    max(w * loss', (1 - w) * latency'), with both objectives min-max normalised over the whole `population`
    (default: the tournament). Every point of the population's front, interior ones included, minimises the score
    for some range of w, so parents spread along the whole front; a dominated member never beats the member
    dominating it (ties go to lower loss, then latency). Crowding distance inside a small tournament, the earlier
    rule, gives both endpoints of the tournament's front infinite crowding, so an interior member was never chosen
    and the population was pushed to the front's corners.
    """
    if not members:
        raise ValueError("empty tournament")
    pool = population or members
    lo_loss, hi_loss = min(m.loss for m in pool), max(m.loss for m in pool)
    lo_lat, hi_lat = min(m.latency for m in pool), max(m.latency for m in pool)
    span_loss = hi_loss - lo_loss if hi_loss > lo_loss else 1.0
    span_lat = hi_lat - lo_lat if hi_lat > lo_lat else 1.0
    w = rng.random() if rng is not None else 0.5

    def score(m: Member) -> float:
        return max(w * (m.loss - lo_loss) / span_loss, (1.0 - w) * (m.latency - lo_lat) / span_lat)

    return min(members, key=lambda m: (score(m), m.loss, m.latency, m.number))


class _Digest:
    """Incremental summary of a study's finished trials (immutable once finished), read trial by trial.

    Trials are scanned once when they first appear; those unfinished then ("open": running or waiting) are
    re-checked each call until they finish. Per call this costs O(new + open), not O(all trials).
    """

    def __init__(self, storage: object) -> None:
        self.storage = storage                     # held so its id() (part of the cache key) is never reused
        self.seen_upto = 0                         # trials numbered below this have been scanned
        self.open: dict[int, FrozenTrial] = {}     # unfinished trials, refreshed each call
        self.complete: list[tuple[Any, int, FrozenTrial]] = []  # sorted by (datetime_complete, number)
        self.finished_ids: set[str] = set()
        self.n_alive_finished = 0                  # finished and not FAIL (COMPLETE / PRUNED)
        # multi-fidelity: candidate (screening trial number) -> {rung: (loss, latency)} of its promotions
        self.rungs: dict[int, dict[int, tuple[float, float]]] = {}

    def update(self, trials: Sequence[FrozenTrial], genome_id: Callable[[FrozenTrial], str | None]) -> bool:
        """Fold in what changed; False if the trial list does not extend the one digested (then rebuild)."""
        if len(trials) < self.seen_upto or any(t.number != i for i, t in enumerate(trials[self.seen_upto:],
                                                                                     self.seen_upto)):
            return False
        for number in list(self.open):
            t = trials[number]
            if t.state.is_finished():
                del self.open[number]
                self._add(t, genome_id)
            else:
                self.open[number] = t
        for t in trials[self.seen_upto:]:
            if t.state.is_finished():
                self._add(t, genome_id)
            else:
                self.open[t.number] = t
        self.seen_upto = len(trials)
        return True

    def _add(self, t: FrozenTrial, genome_id: Callable[[FrozenTrial], str | None]) -> None:
        gid = genome_id(t)
        if gid is not None:
            self.finished_ids.add(gid)
        if is_promotion(t):  # the same candidate trained longer: not a new member, a better-informed result
            if t.state == TrialState.COMPLETE and t.values is not None and len(t.values) >= 2:
                self.rungs.setdefault(candidate_of(t), {})[rung_of(t)] = (float(t.values[0]), float(t.values[1]))
            return
        if t.state == TrialState.FAIL or "cached_from" in t.user_attrs:
            return  # failed, or a replay of an evaluated genome: not a (new) population member
        self.n_alive_finished += 1
        if t.state == TrialState.COMPLETE and t.values is not None and len(t.values) >= 2:
            bisect.insort(self.complete, (t.datetime_complete, t.number, t), key=lambda e: (e[0], e[1]))

    def open_trials(self) -> list[FrozenTrial]:
        return list(self.open.values())

    def newest(self, size: int) -> list[FrozenTrial]:
        return [e[2] for e in self.complete[-size:]] if size > 0 else []

    def members(self, trials: Sequence[FrozenTrial], population: Sequence[FrozenTrial] = ()) -> tuple[
            list[Member], list[Member]]:
        """`trials` (and the `population` used for normalisation) as Members compared at equal rungs: the highest
        rung every one of `trials` reached (0 under single fidelity), the population's members that reached it."""
        def at(t: FrozenTrial, k: int) -> tuple[float, float] | None:
            return (float(t.values[0]), float(t.values[1])) if k == 0 else self.rungs.get(t.number, {}).get(k)

        common = min((max(self.rungs.get(t.number, {0: None})) for t in trials), default=0)
        pool = [Member(t.number, *at(t, common)) for t in trials]  # type: ignore[misc]
        reached = [(t, v) for t in population if (v := at(t, common)) is not None]
        return pool, [Member(t.number, *v) for t, v in reached]


# ---- the sampler ------------------------------------------------------------------------------------------
class AgingEvolutionSampler(BaseSampler):
    """Aging evolution over a SearchSpace: random until the population is full, then tournament + mutation.

    target_latency set  -> constrained mode (the paper): parent = lowest loss meeting the target; width is not
                           mutated but solved: the largest width whose `latency_fn` meets the target.
    target_latency None -> Pareto mode: parent = the tournament member best under a random Chebyshev weighting of
                           the two objectives, normalised over the population (select_parent_pareto).
    seed: each trial's choices come from an RNG seeded by (seed, trial number), so the same study state gives
    the same child whichever sampler instance (or process) asks.
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
            raise FlashsearchError(
                f"search.sample_size must be in [1, population={population}], got {sample_size}")
        if target_latency is not None and not (math.isfinite(target_latency) and target_latency > 0):
            raise FlashsearchError(f"target latency must be a positive number of seconds, got {target_latency}")
        self.space = space
        self.population = int(population)
        self.sample_size = int(sample_size)
        self.target_latency = None if target_latency is None else float(target_latency)
        self.seed = seed
        self.latency_fn = latency_fn
        # Target mode with a predictor: memoised predictions and the widest feasible width (search/latency_target.py).
        self.constraint = (LatencyTarget(space, latency_fn, self.target_latency)
                           if self.target_latency is not None and latency_fn is not None else None)
        self.max_dedup_tries = max(1, int(max_dedup_tries))
        if children_per_ask < 1:
            raise FlashsearchError(f"search.children_per_ask must be >= 1, got {children_per_ask}")
        # K > 1: mutate K distinct new children, train the one a ridge fitted to the completed trials predicts
        # best (search/screening.py). K = 1 is plain Algorithm 1.
        self.children_per_ask = int(children_per_ask)
        self._features: dict[str, Any] = {}  # genome id -> feature vector (a pure function of the genome)
        self._entropy = random.Random()  # only used when seed is None
        # Cache of what finished trials say, per study. Finished trials never change, so it cannot alter a
        # decision (a fresh instance decides the same); it only keeps the per-call cost flat as studies grow.
        self._digests: dict[tuple[int, int], _Digest] = {}

    # ---- Optuna hooks -------------------------------------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}  # enqueued trial (seed / retry): its params are given
        rng = self._rng(trial.number)
        digest = self._digest(study)
        open_trials = [t for t in digest.open_trials() if t.number != trial.number]
        new_open = [t for t in open_trials if not is_promotion(t)]  # promotions are no new candidates
        # Every genome already in the study (failed ones too: re-proposing them would fail again).
        seen = digest.finished_ids | {gid for t in open_trials if (gid := self._genome_id(t)) is not None}
        members = digest.newest(self.population)
        if digest.n_alive_finished + len(new_open) < self.population or not members:
            # Seeding: running and waiting trials count, so W parallel workers do not over-seed.
            params, _ = self._random_unique(rng, seen)
            self._record(study, trial, {ATTR_ORIGIN: "random"})
            return params

        tournament = rng.sample(members, min(self.sample_size, len(members)))
        # Multi-fidelity: the tournament is compared at the highest rung all its members reached.
        pool, population = digest.members(tournament, members)
        if self.target_latency is not None:
            parent = select_parent_constrained(pool, self.target_latency)
        else:
            parent = select_parent_pareto(pool, rng, population)

        parent_params = dict(next(t for t in tournament if t.number == parent.number).params)
        children: dict[str, tuple[dict[str, Any], str]] = {}  # genome id -> (params, mutated factor)
        for _ in range(self.max_dedup_tries * self.children_per_ask):
            child, factor = self.space.mutate(parent_params, rng, include_width=self.target_latency is None)
            child = self._solve_width(self.space.repair(child))
            if child is None:
                continue  # no width meets the target: skipped without training
            gid = self.space.decode(child).id
            if gid not in seen and gid not in children:
                children[gid] = (child, factor)
                if len(children) >= self.children_per_ask:
                    break
        if children:
            child, factor = list(children.values())[self._screen(list(children.values()), digest, rng)]
            self._record(study, trial, {ATTR_ORIGIN: "mutation", ATTR_PARENT: parent.number,
                                        ATTR_MUTATION: factor})
            return child
        # Every mutation of this parent is already in the study or infeasible: explore instead (re-proposing a
        # duplicate would only replay its cached result and burn a trial).
        fresh, _ = self._random_unique(rng, seen)
        self._record(study, trial, {ATTR_ORIGIN: "random-dedup", ATTR_PARENT: parent.number})
        return fresh

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only reached for parameters outside the space (or missing from an enqueued trial): plain random.
        seed = self._rng(trial.number).randrange(2**31)
        return RandomSampler(seed=seed).sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._entropy = random.Random()

    # ---- helpers ------------------------------------------------------------------------------------------
    def _rng(self, number: int) -> random.Random:
        if self.seed is None:
            return random.Random(self._entropy.getrandbits(64))
        return random.Random(f"aging/{self.seed}/{number}")  # str seeds hash with sha512: stable across runs

    def _screen(self, children: list[tuple[dict[str, Any], str]], digest: "_Digest", rng: random.Random) -> int:
        """Which of the children to train (search/screening.py); 0 when there is one."""
        if len(children) == 1:
            return 0
        from flashsearch.search.screening import pick_child

        trained = digest.newest(len(digest.complete))  # every completed, non-replayed trial
        genomes = [self.space.decode(params) for params, _ in children]
        weight = None if self.target_latency is not None else rng.random()
        child_lat = None
        if weight is not None and self.latency_fn is not None:
            child_lat = [self.constraint.latency(g) if self.constraint else self.latency_fn(g) for g in genomes]
        return pick_child([self._feature(g.id, lambda g=g: g) for g in genomes],
                          [self._feature(self._genome_id(t) or f"trial{t.number}",
                                         lambda t=t: self.space.decode(self.space.repair(dict(t.params))))
                           for t in trained],
                          [float(t.values[0]) for t in trained], [float(t.values[1]) for t in trained],
                          child_lat, weight)

    def _feature(self, genome_id: str, genome: Callable[[], Genome]) -> Any:
        f = self._features.get(genome_id)
        if f is None:
            from flashsearch.search.screening import genome_features

            ops = tuple(dict.fromkeys((*getattr(self.space, "operators", ()), "ffn")))
            f = self._features[genome_id] = genome_features(genome(), ops)
        return f

    def _solve_width(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """Target mode: `params` at the widest width meeting the target, None if none does; else unchanged."""
        if self.constraint is None:
            return params
        return self.constraint.widest(params)

    def _random_unique(self, rng: random.Random, seen: set[str]) -> tuple[dict[str, Any], bool]:
        """A random point not yet in the study (in target mode: at its widest feasible width) if one turns up
        within 5 x max_dedup_tries draws; (params, is_new).

        Random draws are the last resort when mutations only find known genomes, so they get more tries: in a
        space with one unseen genome in 10 they miss it with p ~ 1e-5. In target mode a draw no width makes
        feasible is skipped; if every draw was, the space's cheapest point is the fallback (the run checked at
        start that it meets the target)."""
        fallback: dict[str, Any] | None = None
        for _ in range(5 * self.max_dedup_tries):
            params = self._solve_width(self.space.sample(rng))
            if params is None:
                continue
            if self.space.decode(params).id not in seen:
                return params, True
            fallback = fallback or params
        if fallback is None:
            feasible = [p for p in map(self._solve_width, self.space.cheapest()) if p is not None]
            fallback = feasible[0] if feasible else self.space.sample(rng)
        return fallback, False

    def _genome_id(self, t: FrozenTrial) -> str | None:
        """The driver's genome_id attribute, else decoded from the (enqueued) params; None if undecodable."""
        gid = t.user_attrs.get(GENOME_ID_ATTR)
        if gid is not None:
            return gid
        params = t.system_attrs.get("fixed_params") if t.state == TrialState.WAITING else t.params
        try:
            return self.space.decode(self.space.repair(dict(params or {}))).id
        except (KeyError, ValueError, TypeError, FlashsearchError):
            return None  # params from another space or half-written: nothing to dedup against

    def _digest(self, study: Study) -> "_Digest":
        trials = study._get_trials(deepcopy=False, states=None)  # the one storage read per call
        key = (id(study._storage), study._study_id)
        digest = self._digests.get(key)
        if digest is None or not digest.update(trials, self._genome_id):
            digest = _Digest(study._storage)
            digest.update(trials, self._genome_id)
            self._digests[key] = digest
        return digest

    @staticmethod
    def _record(study: Study, trial: FrozenTrial, attrs: Mapping[str, Any]) -> None:
        for key, value in attrs.items():
            study._storage.set_trial_system_attr(trial._trial_id, key, value)


__all__ = [
    "AgingEvolutionSampler", "Member", "select_parent_constrained", "select_parent_pareto", "dominates", "ATTR_ORIGIN", "ATTR_PARENT", "ATTR_MUTATION",
]
