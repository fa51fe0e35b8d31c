"""Multi-fidelity search: a ladder of training budgets (rungs) and the asynchronous promotion rule (ASHA-style).

Every candidate trains at rung 0 (its *screening* trial). When a result lands at rung k, the candidates of rung k
are ranked and, of the n_k that reached it, the best floor(n_k / eta) are promoted to rung k+1 (as many as that
rung has free slots: floor(n_k / eta) minus the promotions already made from it): asynchronously, as in ASHA
(Li et al., 2020), so no worker waits for a rung to fill. A promotion is a new
trial of the same params, enqueued in the study, that continues training from the candidate's rung-k checkpoint.

The ranking is the front's, not the loss alone (multi-objective ASHA, Schmucker et al., 2021): candidates are
ordered by non-dominated layer of (loss, latency), then, within a layer, by how much latency axis they cover
(crowding distance, ends first). A front member is by definition the best candidate of its region of the
latency axis (nothing as fast or faster has a lower loss), so every region of the front is promoted, not only
the large, slow models a loss ranking would favour. Under a latency target, candidates meeting it come first,
by loss.

Trials carry their fidelity in user attributes: `rung` (index), `top_rung` (index of the ladder's last rung),
and, on promotions, `candidate` (the screening trial's number). Results are compared only at equal rungs; the
Pareto front, exports and hypervolume use the top rung alone (flashsearch/pareto.py, flashsearch/trials.py).
"""

from __future__ import annotations

import bisect
import copy
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from flashsearch.config import Ladder
from flashsearch.search import attrs

# ---- what a trial says about its fidelity ------------------------------------------------------------------
def rung_of(t: FrozenTrial) -> int:
    return int(t.user_attrs.get(attrs.RUNG, 0))


def is_promotion(t: FrozenTrial) -> bool:
    return rung_of(t) > 0


def candidate_of(t: FrozenTrial) -> int:
    """The screening trial a result belongs to (itself for a screening trial)."""
    return int(t.user_attrs.get(attrs.CANDIDATE, t.number))


def fidelity_attrs(t: FrozenTrial) -> dict[str, Any]:
    """The attributes a re-run of `t` (retry, interrupted trial) must carry to stay the same rung of the same
    candidate."""
    return {k: t.user_attrs[k] for k in (attrs.RUNG, attrs.TOP_RUNG, attrs.CANDIDATE) if k in t.user_attrs}


# ---- the promotion rule (pure) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RungResult:
    candidate: int      # screening trial number
    rung: int
    loss: float
    latency: float


def pareto_layers(points: Sequence[tuple[float, float]]) -> list[int]:
    """Non-dominated layer (0 = the front) of each (latency, loss) point, both minimised. O(n log n): points in
    order of latency join the first layer whose best loss so far they beat (layers' best losses increase)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    best: list[float] = []   # best (lowest) loss of each layer so far, increasing with the layer index
    layer = [0] * len(points)
    for i in order:
        k = bisect.bisect_right(best, points[i][1])  # first layer whose best loss is above this point's
        if k == len(best):
            best.append(points[i][1])
        else:
            best[k] = points[i][1]
        layer[i] = k
    return layer


def _crowding(points: Sequence[tuple[float, float]]) -> list[float]:
    """NSGA-II crowding distance within one layer (ends infinite): how much of the axes a point spans."""
    n = len(points)
    dist = [0.0] * n
    for axis in (0, 1):
        order = sorted(range(n), key=lambda i: points[i][axis])
        lo, hi = points[order[0]][axis], points[order[-1]][axis]
        dist[order[0]] = dist[order[-1]] = math.inf
        span = hi - lo
        if span <= 0:
            continue
        for a, b, c in zip(order, order[1:], order[2:]):
            dist[b] += (points[c][axis] - points[a][axis]) / span
    return dist


def promotion_order(results: Sequence[RungResult], target_latency: float | None = None) -> list[RungResult]:
    """Results of one rung, best first (see module doc)."""
    if target_latency is not None:
        return sorted(results, key=lambda r: (r.latency > target_latency, r.loss, r.latency, r.candidate))
    pts = [(r.latency, r.loss) for r in results]
    layers = pareto_layers(pts)
    crowd = [0.0] * len(results)
    for k in set(layers):
        members = [i for i, lk in enumerate(layers) if lk == k]
        for i, d in zip(members, _crowding([pts[i] for i in members])):
            crowd[i] = d
    return [results[i] for i in sorted(range(len(results)),
                                       key=lambda i: (layers[i], -crowd[i], results[i].loss, results[i].candidate))]


def promotions(results: Sequence[RungResult], attempted: set[tuple[int, int]], ladder: Ladder,
               target_latency: float | None = None) -> list[tuple[int, int]]:
    """(candidate, next rung) pairs to start now. Per rung k below the top, with n_k results at k: the best
    unpromoted candidates among the best floor(n_k / eta), while fewer than floor(n_k / eta) have a trial at k+1
    (`attempted` holds the (candidate, rung) pairs that have one). Counting the promotions already made keeps
    the cost of a rung fixed (plain ASHA promotes whoever is in the top share at each check, so early arrivals
    that later drop out of it still cost a training each); a late, better candidate takes the next free slot."""
    out: list[tuple[int, int]] = []
    for k in range(ladder.top):
        at_k = [r for r in results if r.rung == k]
        quota = len(at_k) // ladder.eta
        free = quota - sum(1 for r in at_k if (r.candidate, k + 1) in attempted)
        for r in promotion_order(at_k, target_latency)[:quota]:
            if free <= 0:
                break
            if (r.candidate, k + 1) not in attempted:
                out.append((r.candidate, k + 1))
                free -= 1
    return out


# ---- the study's view ----------------------------------------------------------------------------------------
def study_results(trials: Sequence[FrozenTrial]) -> tuple[list[RungResult], set[tuple[int, int]],
                                                           dict[int, FrozenTrial]]:
    """From a study's trials: the COMPLETE result of each (candidate, rung) (replays of a known genome are no
    candidates), the (candidate, rung) pairs that have a promotion trial in any state, and the screening trials
    by number."""
    results: dict[tuple[int, int], RungResult] = {}
    attempted: set[tuple[int, int]] = set()
    screening: dict[int, FrozenTrial] = {}
    for t in trials:
        if attrs.CACHED_FROM in t.user_attrs:
            continue
        c, k = candidate_of(t), rung_of(t)
        if k > 0:
            attempted.add((c, k))
        elif t.state == TrialState.COMPLETE:
            screening[c] = t
        if t.state == TrialState.COMPLETE and t.values is not None and len(t.values) >= 2 \
                and (c, k) not in results:
            results[(c, k)] = RungResult(c, k, float(t.values[0]), float(t.values[1]))
    return list(results.values()), attempted, screening


def enqueue_promotions(study: Any, ladder: Ladder, target_latency: float | None = None) -> list[tuple[int, int]]:
    """Enqueue the promotions due now; returns them. Idempotent (a pair with a trial is never enqueued again), so
    a controller killed at any point re-derives the same queue from the study on its next start."""
    results, attempted, screening = study_results(study.get_trials(deepcopy=False))
    due = [(c, k) for c, k in promotions(results, attempted, ladder, target_latency) if c in screening]
    for c, k in due:
        study.enqueue_trial(dict(screening[c].params),
                            user_attrs={attrs.RUNG: k, attrs.TOP_RUNG: ladder.top, attrs.CANDIDATE: c,
                                        "genome_id": screening[c].user_attrs.get(attrs.GENOME_ID)})
    return due


def waiting_promotions(study: Any) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if is_promotion(t))


# ---- baselines see the screening trials only ------------------------------------------------------------------
class _ScreeningStudy:
    """A study as a baseline sampler should see it under multi-fidelity: one trial per candidate (its screening
    result). Promotion trials repeat a candidate's params with a loss from longer training; a model of the study
    (TPE, NSGA-II) would mistake them for new, better points."""

    def __init__(self, study: Any) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    @staticmethod
    def _screening(trials: list[FrozenTrial], states: Any) -> list[FrozenTrial]:
        """Without a state filter the list keeps one entry per trial NUMBER (Optuna's GA samplers index it by
        trial number): a promotion appears as a FAILed copy, which no sampler learns from. With one, promotions
        are left out."""
        if states is not None:
            return [t for t in trials if not is_promotion(t)]
        out = []
        for t in trials:
            if is_promotion(t):
                t = copy.copy(t)
                t.state = TrialState.FAIL
            out.append(t)
        return out

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        return self._screening(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache), states)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._screening(self._study.get_trials(deepcopy=deepcopy, states=states), states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class ScreeningOnly(BaseSampler):
    """Wraps an Optuna sampler so that it learns from screening trials only (see _ScreeningStudy)."""

    def __init__(self, inner: BaseSampler) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:   # target_latency and the like
        return getattr(self.inner, name)

    def infer_relative_search_space(self, study: Any, trial: FrozenTrial) -> Any:
        return self.inner.infer_relative_search_space(_ScreeningStudy(study), trial)

    def sample_relative(self, study: Any, trial: FrozenTrial, search_space: Any) -> Any:
        return self.inner.sample_relative(_ScreeningStudy(study), trial, search_space)

    def sample_independent(self, study: Any, trial: FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self.inner.sample_independent(_ScreeningStudy(study), trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: FrozenTrial) -> None:
        self.inner.before_trial(_ScreeningStudy(study), trial)

    def after_trial(self, study: Any, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self.inner.after_trial(_ScreeningStudy(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


__all__ = ["Ladder", "RungResult", "promotions", "promotion_order", "pareto_layers", "study_results",
           "enqueue_promotions", "waiting_promotions", "ScreeningOnly", "rung_of", "candidate_of", "is_promotion",
           "fidelity_attrs"]
