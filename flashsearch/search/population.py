"""The population view of aging evolution: which trials form the population, and how a parent is chosen.

Selection rules are pure functions over `Member`s (tested directly); `PopulationView` reads them from a study.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from optuna.trial import FrozenTrial, TrialState

from flashsearch.search import attrs
from flashsearch.search.rungs import candidate_of, is_promotion, rung_of


@dataclass(frozen=True)
class Member:
    """One population member as the selection rules see it."""

    number: int
    loss: float
    latency: float


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


class PopulationView:
    """A study's trials as aging evolution sees them: the population (newest completed candidates), every genome
    already proposed, and under multi-fidelity each candidate's result at every rung it reached.

    Built incrementally, because finished trials never change: trials are scanned once when they first appear;
    those unfinished then ("open": running or waiting) are re-checked each call until they finish. Per call this
    costs O(new + open), not O(all trials), so the controller's cost stays flat as a study grows.

    params: the space's parameter names; a finished trial without all of them (another sampler's, or written by
    hand into the same study) is foreign: never a member, never a parent. signs: +1 for a minimized objective,
    -1 for a maximized one, so that the selection rules always minimize; one objective (classic regularized
    evolution) gives every member latency 0.
    """

    def __init__(self, storage: object, params: Iterable[str] = (), signs: Sequence[float] = (1.0, 1.0)) -> None:
        self.storage = storage                     # held so its id() (part of the cache key) is never reused
        self.params = frozenset(params)
        self.signs = tuple(float(s) for s in signs)
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
        scored = t.state == TrialState.COMPLETE and t.values is not None and len(t.values) == len(self.signs)
        if is_promotion(t):  # the same candidate trained longer: not a new member, a better-informed result
            if scored:
                self.rungs.setdefault(candidate_of(t), {})[rung_of(t)] = self.objectives(t)
            return
        if t.state == TrialState.FAIL or attrs.CACHED_FROM in t.user_attrs or not self.params <= t.params.keys():
            return  # failed, a replay of an evaluated genome, or foreign: not a (new) population member
        self.n_alive_finished += 1
        if scored:
            bisect.insort(self.complete, (t.datetime_complete, t.number, t), key=lambda e: (e[0], e[1]))

    def objectives(self, t: FrozenTrial) -> tuple[float, float]:
        """(loss, latency) of a scored trial, both to minimize."""
        values = [sign * float(v) for sign, v in zip(self.signs, t.values)]
        return values[0], (values[1] if len(values) > 1 else 0.0)

    def open_trials(self) -> list[FrozenTrial]:
        return list(self.open.values())

    def newest(self, size: int) -> list[FrozenTrial]:
        return [e[2] for e in self.complete[-size:]] if size > 0 else []

    def members(self, trials: Sequence[FrozenTrial], population: Sequence[FrozenTrial] = ()) -> tuple[
            list[Member], list[Member]]:
        """`trials` (and the `population` used for normalisation) as Members compared at equal rungs: the highest
        rung every one of `trials` reached (0 under single fidelity), the population's members that reached it."""
        def at(t: FrozenTrial, k: int) -> tuple[float, float] | None:
            return self.objectives(t) if k == 0 else self.rungs.get(t.number, {}).get(k)

        common = min((max(self.rungs.get(t.number, {0: None})) for t in trials), default=0)
        pool = [Member(t.number, *at(t, common)) for t in trials]  # type: ignore[misc]
        reached = [(t, v) for t in population if (v := at(t, common)) is not None]
        return pool, [Member(t.number, *v) for t, v in reached]


__all__ = ["Member", "PopulationView", "dominates", "select_parent_constrained", "select_parent_pareto"]
