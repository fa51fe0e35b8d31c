"""What one run_search call did: its running counts (which feed the progress events) and the final summary."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial

from flashsearch.search.rungs import Ladder, rung_of

from flashsearch.progress import EventKind, ProgressListener, SearchEvent, format_duration
from flashsearch.search import attrs


# Consecutive proposals of already-evaluated genomes after which a search stops as "exhausted": replays do not
# count as trials, so a sampler that only finds known genomes would otherwise never reach search.trials.
EXHAUSTED_AFTER = 200


@dataclass
class SearchSummary:
    n_trials: int                   # COMPLETE trials asked for
    complete: int                   # COMPLETE evaluated trials at the end (earlier runs included; replays not)
    evaluated: int = 0              # evaluated by a worker in this run
    cached: int = 0                 # replays of an already-evaluated genome in this run (not counted as trials)
    failed: int = 0                 # failed in this run
    recovered: int = 0              # orphaned RUNNING trials failed and re-enqueued at start
    retried: int = 0                # failed trials re-enqueued (search.retries) in this run
    promoted: int = 0               # multi-fidelity: promotions enqueued in this run
    stopped: str = "completed"      # completed | max_failures | timeout | exhausted | interrupted
    elapsed_s: float = 0.0
    best_number: int | None = None
    best_loss: float | None = None
    best_latency: float | None = None
    last_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.stopped == "completed"

    def line(self) -> str:
        retried = f", {self.retried} retried" if self.retried else ""
        promoted = f", {self.promoted} promotions" if self.promoted else ""
        s = (f"{self.complete}/{self.n_trials} complete ({self.evaluated} evaluated, {self.cached} cached, "
             f"{self.failed} failed{retried}{promoted}) in {format_duration(self.elapsed_s)}")
        if self.best_number is not None:
            s += f"; best loss {self.best_loss:.4g} @ {self.best_latency:.3g} s (trial #{self.best_number})"
        if self.stopped == "max_failures":
            s += f"; stopped early after {self.failed} failures (last: {self.last_error})"
        elif self.stopped == "exhausted":
            s += (f"; stopped: the sampler proposed only already-evaluated genomes {EXHAUSTED_AFTER} times in a "
                  "row (the space looks exhausted; widen it or lower search.trials)")
        elif self.stopped != "completed":
            s += f"; stopped: {self.stopped}"
        return s

    def __str__(self) -> str:
        return self.line()


@dataclass
class Cached:
    """An evaluated genome's result, replayed for an identical genome instead of evaluating it again."""

    number: int
    values: tuple[float, float]
    latency_source: Any
    metrics: Any


@dataclass
class Best:
    """Best so far (lowest loss; under a target, among the trials meeting it)."""

    target: float | None
    number: int | None = None
    loss: float = math.inf
    latency: float = math.inf

    def offer(self, number: int, loss: float, latency: float) -> None:
        if self.target is not None and latency > self.target:
            return
        if (loss, latency) < (self.loss, self.latency):
            self.number, self.loss, self.latency = number, loss, latency


@dataclass
class RunState:
    """Mutable bookkeeping of one run_search call."""

    n_trials: int
    t0: float
    progress: ProgressListener | None
    best: Best
    cache: dict[str, Cached] = field(default_factory=dict)
    complete: int = 0
    evaluated: int = 0
    cached: int = 0
    failed: int = 0
    running: int = 0
    retried: int = 0
    replays_in_a_row: int = 0       # cached replays since the last candidate sent to a worker
    last_error: str | None = None
    ladder: Ladder | None = None    # multi-fidelity rungs (None: single fidelity)
    promoted: int = 0
    rung_seconds: dict[int, list[float]] = field(default_factory=dict)  # this run's evaluation seconds per rung

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def eta(self) -> float | None:
        done = self.evaluated + self.cached
        if done == 0:
            return None
        if self.ladder is None or not self.rung_seconds.get(0):
            return max(0, self.n_trials - self.complete) * self.elapsed() / done
        return self._multi_fidelity_eta()

    def _multi_fidelity_eta(self) -> float:
        """Remaining work of a multi-fidelity run: the candidates left to screen and the promotions the ladder will
        still make once every candidate is screened (rung k+1 gets floor(n_k / eta)), each at the mean seconds its
        rung took in this run (a rung with none yet: rung 0's, scaled by the tokens it adds), converted to wall
        time by this run's ratio of wall time to evaluation seconds (the workers' parallelism)."""
        assert self.ladder is not None
        tokens, eta = self.ladder.tokens, self.ladder.eta
        mean0 = sum(self.rung_seconds[0]) / len(self.rung_seconds[0])
        remaining, expected = 0.0, max(self.n_trials, self.complete)
        for k in range(self.ladder.top + 1):
            if k:
                expected //= eta
            done_k = len(self.rung_seconds.get(k, ())) if k else self.complete
            times = self.rung_seconds.get(k)
            # Until a rung has a result, charge it rung 0's time per token at its full budget: an upper bound, since
            # a promotion continues from a checkpoint (how far back it resumes is the proxy's business).
            mean = sum(times) / len(times) if times else mean0 * tokens[k] / tokens[0]
            remaining += max(0, expected - done_k) * mean
        spent = sum(sum(v) for v in self.rung_seconds.values())
        return remaining * self.elapsed() / spent if spent > 0 else remaining

    def remember(self, t: FrozenTrial) -> None:
        """Count a COMPLETE trial (not a cached replay: it is no new trial; not a promotion: it is no new
        candidate) and index its result by genome id (for dedup) and for the best-so-far (under multi-fidelity,
        top-rung results only: losses of different rungs do not compare)."""
        rung = rung_of(t)
        if attrs.CACHED_FROM not in t.user_attrs and rung == 0:
            self.complete += 1
        if t.values is None or len(t.values) < 2:
            return
        loss, latency = float(t.values[0]), float(t.values[1])
        gid = t.user_attrs.get(attrs.GENOME_ID)
        if gid is not None and gid not in self.cache and rung == 0:
            self.cache[gid] = Cached(t.number, (loss, latency), t.user_attrs.get(attrs.LATENCY_SOURCE),
                                     t.user_attrs.get(attrs.METRICS))
        if self.ladder is None or rung == self.ladder.top:
            self.best.offer(t.number, loss, latency)

    def emit(self, kind: EventKind, **kw: Any) -> None:
        if self.progress is None:
            return
        b = self.best
        event = SearchEvent(
            kind=kind, complete=self.complete, target=self.n_trials, running=self.running, failed=self.failed,
            elapsed_s=self.elapsed(), eta_s=self.eta(), best_number=b.number,
            best_loss=None if b.number is None else b.loss, best_latency=None if b.number is None else b.latency,
            **kw)
        try:
            self.progress(event)
        except Exception as e:  # a broken progress callback must not abort hours of search: warn, go silent
            warnings.warn(f"progress callback failed ({type(e).__name__}: {e}); progress output disabled",
                          RuntimeWarning, stacklevel=2)
            self.progress = None

    def summarize(self, summary: SearchSummary, stopped: str) -> SearchSummary:
        summary.complete, summary.evaluated, summary.cached = self.complete, self.evaluated, self.cached
        summary.failed, summary.last_error, summary.stopped = self.failed, self.last_error, stopped
        summary.retried, summary.promoted = self.retried, self.promoted
        summary.elapsed_s = self.elapsed()
        if self.best.number is not None:
            summary.best_number, summary.best_loss, summary.best_latency = (
                self.best.number, self.best.loss, self.best.latency)
        self.emit("end", reason=stopped, message=summary.line())
        return summary


__all__ = ["SearchSummary", "RunState", "Best", "Cached", "EXHAUSTED_AFTER"]
