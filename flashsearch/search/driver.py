"""The search loop: ask the study for a candidate, evaluate it on a worker, tell the result; W at a time.

The Optuna study is the single source of truth. Each candidate is a trial whose user attributes carry the
genome (`genome`, `genome_id`, set as soon as the trial is asked so samplers can avoid in-flight duplicates)
and, once finished, `latency_source`, `metrics`, `eval_seconds` (or `error` / `error_kind` for FAILED trials,
see search/failures.py). Results are told as they land, not generation by generation.

Where workers run: search/backends.py. What happens before the loop (orphaned trials, seeds):
search/recovery.py. What a run did: search/summary.py.

Multi-fidelity (search.fidelity=multi, search/rungs.py): every new candidate is a screening trial at rung 0;
promotions (the same params at a higher rung, continuing from the candidate's checkpoint) are enqueued in the
study as results land and run ahead of new candidates. search.trials counts candidates (screening trials); the
search ends when they are done and no promotion is due. Hooks.rung_done hears when a rung is no longer needed.

With search.retries=N, a trial that failed for a transient kind (error, oom, timeout, time_limit, worker_died) is enqueued again
with the same params, at most N times per genome; the new trial records `retry_of` (the failed trial number) and
`attempt` (1 = first try). rejected / invalid_result are deterministic verdicts and are not retried.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

import optuna
from optuna.study import StudyDirection
from optuna.trial import Trial, TrialState

from flashsearch.config import RunConfig, SearchConfig
from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.progress import ProgressListener
from flashsearch.search.backends import LOCAL, Backend, make_backend
from flashsearch.search.latency_target import CONSTRAINT_KEY
from flashsearch.search.failures import RETRYABLE, Evaluator, one_line
from flashsearch.search.recovery import INTERRUPTED, abandon, recover_orphans
from flashsearch.search.rungs import (candidate_of, enqueue_promotions, fidelity_attrs, rung_of,
                                      waiting_promotions)
from flashsearch.search.results import check_result, extras, jsonable
from flashsearch.search.summary import EXHAUSTED_AFTER, Best, RunState, SearchSummary
from flashsearch.search import attrs
from flashsearch.space import SearchSpace


@dataclass
class _Pending:
    trial: Trial
    genome: Genome
    started: float
    deadline: float = math.inf      # monotonic time after which the trial is cancelled (trial_timeout_s)
    attempt: int = 1                # 1 = first try; retries count up
    rung: int | None = None         # multi-fidelity rung (None: single fidelity)


@dataclass(frozen=True)
class Hooks:
    """What a caller plugs into a running search; every hook is optional."""

    progress: ProgressListener | None = None       # trial events: console progress, the W&B logger (progress.py)
    # Set it (e.g. from a signal handler) to stop at the next safe point, as on KeyboardInterrupt: trials in flight
    # are cancelled, failed as interrupted and re-queued, then KeyboardInterrupt is raised. Unlike an exception
    # raised by a handler, it never lands inside a storage write.
    stop: threading.Event | None = None
    # Multi-fidelity: called with (genome_id, rung) once rung+1 of that genome has its result, so whatever was kept
    # to continue from that rung (the evaluator's checkpoint) can go.
    rung_done: Callable[[str, int], None] | None = None


def run_search(study: optuna.Study, space: SearchSpace, evaluator: Evaluator, config: RunConfig,
               hooks: Hooks = Hooks()) -> SearchSummary:
    """Run until the study holds `config.search.trials` evaluated COMPLETE trials (earlier runs count; replays of an
    already evaluated genome do not), `config.search.workers` in flight, on the workers `config.ray` describes.

    evaluator(genome_json[, rung]) -> {"loss", "latency", "latency_source", ...extra metrics}; raises TrialFailed
    (or anything) on failure. Seeds are enqueued beforehand (recovery.enqueue_seeds). What each setting does:
    the SearchConfig and RayConfig fields (flashsearch/config.py); under search.fidelity=multi the candidates
    climb `config.ladder()`.
    """
    _check_study(study)
    search, ray = config.search, config.ray
    n_trials, workers = search.trials, search.workers
    budget = max(10, n_trials) if search.max_failures is None else int(search.max_failures)
    ladder = config.ladder()
    progress, stop = hooks.progress, hooks.stop
    run = RunState(n_trials=n_trials, t0=time.monotonic(), progress=progress, best=Best(search.target_latency),
                   ladder=ladder)
    recovered = recover_orphans(study, space)
    if ladder is not None:  # results told just before a stop may have left promotions due
        enqueue_promotions(study, ladder, search.target_latency)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run.remember(t)
    summary = SearchSummary(n_trials=n_trials, complete=run.complete, recovered=recovered)
    run.emit("start", message=f"{run.complete} complete, {recovered} interrupted trial(s) re-queued, "
                              f"{workers} worker(s)" + (" (in-process)" if ray.address == LOCAL else ""))
    if run.complete >= n_trials and not _promotion_due(study, run):
        return run.summarize(summary, "completed")

    # Data-parallel trials keep Ray Train's run folders under the run directory, which every node of a cluster sees.
    backend = make_backend(evaluator, workers, ray, os.path.join(os.path.abspath(config.out_dir), "ray_train"))
    dists = space.distributions()
    deadline = None if search.timeout_s is None else run.t0 + float(search.timeout_s)
    in_flight: dict[Hashable, _Pending] = {}
    stopped: str | None = None
    try:
        while True:
            while stopped is None and len(in_flight) < workers and (
                    run.complete + sum(p.rung in (None, 0) for p in in_flight.values()) < n_trials
                    or _promotion_due(study, run)):
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                if deadline is not None and time.monotonic() >= deadline:
                    stopped = "timeout"
                    break
                _ask_one(study, space, dists, backend, run, search, in_flight)
                if run.failed > budget:
                    stopped = "max_failures"
                elif run.replays_in_a_row >= EXHAUSTED_AFTER:
                    stopped = "exhausted"
            if stopped == "max_failures":
                for handle, p in list(in_flight.items()):
                    backend.cancel(handle)
                    abandon(study, p.trial._trial_id, f"cancelled: search stopped after {run.failed} failures")
                in_flight.clear()
                run.running = 0
            if not in_flight:
                break
            wake = min([p.deadline for p in in_flight.values()]
                       + ([deadline] if deadline is not None and not stopped else []))
            wait_s = None if wake == math.inf else max(0.0, wake - time.monotonic())
            if stop is not None:
                if stop.is_set():
                    raise KeyboardInterrupt
                wait_s = 0.2 if wait_s is None else min(wait_s, 0.2)  # poll the stop flag
            got = backend.wait_one(list(in_flight), wait_s)
            if got is None:
                now = time.monotonic()
                expired = [(h, p) for h, p in in_flight.items() if p.deadline <= now]
                for handle, p in expired:  # per-trial timeout: kill the task, fail the trial, go on
                    backend.cancel(handle)
                    del in_flight[handle]
                    run.running = len(in_flight)
                    _tell(study, run, search, hooks, p, {"ok": False, "kind": "timeout", "seconds": now - p.started,
                                          "error": f"timeout after {search.trial_timeout_s:g} s (search.trial_timeout_s)"})
                if not expired and deadline is not None and now >= deadline:
                    stopped = "timeout"  # deadline passed while waiting: finish what is in flight, ask nothing new
            else:
                handle, outcome = got
                pending = in_flight.pop(handle)
                run.running = len(in_flight)
                _tell(study, run, search, hooks, pending, outcome)
            if run.failed > budget:
                stopped = "max_failures"
    except KeyboardInterrupt:
        for handle, p in in_flight.items():
            backend.cancel(handle)
            abandon(study, p.trial._trial_id, INTERRUPTED)
        in_flight.clear()
        recover_orphans(study, space)  # a trial interrupted while being asked (one controller per study)
        run.running = 0
        run.summarize(summary, "interrupted")
        raise
    finally:
        backend.close()
    return run.summarize(summary, "completed" if run.complete >= n_trials else (stopped or "completed"))


def _promotion_due(study: optuna.Study, run: RunState) -> bool:
    """A promotion waits in the study (it runs even when the candidates are all screened)."""
    return run.ladder is not None and waiting_promotions(study) > 0


def _check_study(study: optuna.Study) -> None:
    if list(study.directions) != [StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]:
        raise FlashsearchError(
            "the study must have two objectives, both minimized (loss, latency); create it with "
            "optuna.create_study(directions=['minimize', 'minimize'])")


def _ask_one(study: optuna.Study, space: SearchSpace, dists: Mapping, backend: Backend, run: RunState,
             search: SearchConfig, in_flight: dict[Hashable, _Pending]) -> None:
    trial = study.ask(fixed_distributions=dict(dists))
    try:
        # Baseline samplers (TPE, NSGA-II, random) may propose points outside the space's limits: repair.
        proposed = dict(trial.params)
        repaired = space.repair(proposed)
        genome = space.decode(repaired)
    except Exception as e:
        _fail(study, run, trial, one_line(f"cannot decode params into a genome: {type(e).__name__}: {e}"),
              "invalid_params")
        return
    if repaired != proposed:
        _record_repair(study, trial, dists, proposed, repaired)
    trial.set_user_attr(attrs.GENOME, genome.to_json())
    trial.set_user_attr(attrs.GENOME_ID, genome.id)
    rung = None
    if run.ladder is not None:
        rung = rung_of(trial)
        if attrs.RUNG not in trial.user_attrs:  # a new candidate: its screening trial
            trial.set_user_attr(attrs.RUNG, 0)
            trial.set_user_attr(attrs.TOP_RUNG, run.ladder.top)
    hit = run.cache.get(genome.id) if not rung else None  # a promotion is never a replay
    if hit is not None:
        # Identical genome already evaluated: replay its result instead of spending a worker on it. The replay
        # is COMPLETE (a sampler that models the study learns from it) but is no new trial: it does not count
        # toward search.trials nor join the aging population.
        trial.set_user_attr(attrs.CACHED_FROM, hit.number)
        trial.set_user_attr(attrs.LATENCY_SOURCE, hit.latency_source)
        if hit.metrics is not None:
            trial.set_user_attr(attrs.METRICS, hit.metrics)
        trial.set_user_attr(attrs.EVAL_SECONDS, 0.0)
        _record_constraint(trial, run, hit.values[1])
        frozen = study.tell(trial, list(hit.values))
        run.cached += 1
        run.replays_in_a_row += 1
        run.remember(frozen)
        run.emit("trial_cached", number=trial.number, loss=hit.values[0], latency=hit.values[1],
                 latency_source=hit.latency_source, cached_from=hit.number, **_about(genome, trial.params))
        return
    attempt = int(trial.user_attrs.get(attrs.ATTEMPT, 1))
    run.replays_in_a_row = 0
    started = time.monotonic()
    deadline = math.inf if search.trial_timeout_s is None else started + search.trial_timeout_s
    in_flight[backend.submit(genome.to_json(), rung)] = _Pending(trial, genome, started, deadline, attempt, rung)
    run.running = len(in_flight)
    run.emit("trial_started", number=trial.number, **_about(genome, trial.params), **_fidelity(trial, run))


def _fidelity(trial: Trial | Any, run: RunState) -> dict[str, Any]:
    """Progress fields of a multi-fidelity trial (none under single fidelity)."""
    if run.ladder is None:
        return {}
    return {"rung": rung_of(trial), "top_rung": run.ladder.top, "candidate": candidate_of(trial)}


def _about(genome: Genome, params: Mapping[str, Any]) -> dict[str, Any]:
    """What progress listeners (the W&B logger) get to know about a trial's candidate."""
    return {attrs.GENOME_ID: genome.id, "summary": genome.summary(), "params": dict(params),
            "d_model": genome.d_model, "n_layers": genome.n_layers}


def _tell(study: optuna.Study, run: RunState, search: SearchConfig, hooks: Hooks, pending: _Pending,
          outcome: Mapping[str, Any]) -> None:
    trial = pending.trial
    seconds = float(outcome.get("seconds", time.monotonic() - pending.started))
    about = _about(pending.genome, trial.params)
    if outcome.get("node"):
        trial.set_user_attr(attrs.WORKER_NODE, str(outcome["node"]))   # the Ray node it ran on
    if not outcome.get("ok"):
        if outcome.get("detail"):
            trial.set_user_attr(attrs.ERROR_DETAIL, str(outcome["detail"]))
        trial.set_user_attr(attrs.EVAL_SECONDS, seconds)
        kind = str(outcome.get("kind") or "error")
        # Retry enqueued before the FAIL is written: a kill in between leaves the trial RUNNING with its retry
        # queued (the next start only fails it); the other order would lose the candidate.
        reason = str(outcome.get("error") or "unknown error")
        if _maybe_retry(study, run, search.retries, pending, kind):
            reason += f" [{kind}: queued again as attempt {pending.attempt + 1}]"
        elif pending.attempt > 1:
            reason += f" [{kind}: attempt {pending.attempt} failed too; not retried again]"
        _fail(study, run, trial, reason, kind, about)
        return
    result = outcome["result"]
    problem = check_result(result)
    if problem is not None:
        trial.set_user_attr(attrs.EVAL_SECONDS, seconds)
        _fail(study, run, trial, problem, "invalid_result", about)
        return
    loss, latency = float(result["loss"]), float(result["latency"])
    source = str(result["latency_source"])
    trial.set_user_attr(attrs.LATENCY_SOURCE, source)
    trial.set_user_attr(attrs.METRICS, jsonable(extras(result)))
    trial.set_user_attr(attrs.EVAL_SECONDS, seconds)
    _record_constraint(trial, run, latency)
    frozen = study.tell(trial, [loss, latency])
    run.evaluated += 1
    if run.ladder is not None:
        run.rung_seconds.setdefault(rung_of(trial), []).append(seconds)
    run.remember(frozen)
    run.emit("trial_done", number=trial.number, loss=loss, latency=latency, latency_source=source,
             metrics=extras(result), **about, **_fidelity(frozen, run))
    if run.ladder is not None:
        _after_rung(study, run, hooks, frozen)


def _after_rung(study: optuna.Study, run: RunState, hooks: Hooks, t: Any) -> None:
    """A rung result landed: enqueue the promotions now due, and tell the caller that the rung it continued from is
    done with (rung k's result makes rung k-1's checkpoint useless: any later promotion continues from rung k)."""
    assert run.ladder is not None
    run.promoted += len(enqueue_promotions(study, run.ladder, run.best.target))
    k = rung_of(t)
    if k > 0 and hooks.rung_done is not None:
        hooks.rung_done(str(t.user_attrs.get(attrs.GENOME_ID)), k - 1)


def _fail(study: optuna.Study, run: RunState, trial: Trial, reason: str, kind: str = "error",
          about: Mapping[str, Any] | None = None) -> None:
    trial.set_user_attr(attrs.ERROR, reason)
    trial.set_user_attr(attrs.ERROR_KIND, kind)
    study.tell(trial, state=TrialState.FAIL)
    run.failed += 1
    run.last_error = reason
    run.emit("trial_failed", number=trial.number, reason=reason, error_kind=kind, **(about or {}))


def _record_repair(study: optuna.Study, trial: Trial, dists: Mapping, proposed: Mapping[str, Any],
                   repaired: Mapping[str, Any]) -> None:
    """Store the params of the genome actually evaluated (the proposal is kept in `proposed_params`): a sampler
    that models the study (TPE, NSGA-II) must learn what was measured, not a many-to-one encoding of it."""
    trial.set_user_attr(attrs.PROPOSED_PARAMS, {k: v for k, v in proposed.items()})
    for name, value in repaired.items():
        dist = dists.get(name)
        if dist is None or proposed.get(name) == value:
            continue
        study._storage.set_trial_param(trial._trial_id, name, dist.to_internal_repr(value), dist)
        trial._cached_frozen_trial.params[name] = value  # what trial.params answers from now on


def _record_constraint(trial: Trial, run: RunState, latency: float) -> None:
    """Target mode: the trial's constraint value (latency - target, <= 0 feasible), which NSGA-II and TPE use to
    prefer feasible trials and which tells, for every sampler, whether a trial meets the target."""
    if run.best.target is not None:
        trial.set_constraint(CONSTRAINT_KEY, float(latency) - run.best.target)


def _maybe_retry(study: optuna.Study, run: RunState, retries: int, pending: _Pending, kind: str) -> bool:
    """Enqueue the failed trial's params again (retry_of, attempt + 1) if retries are left for this kind; the
    retry is a new task, on a fresh worker process wherever the backend gives one (Ray)."""
    if kind not in RETRYABLE or pending.attempt > retries:
        return False
    number = pending.trial.number
    study.enqueue_trial(dict(pending.trial.params), user_attrs={attrs.RETRY_OF: number, attrs.ATTEMPT: pending.attempt + 1,
                                                                **fidelity_attrs(pending.trial)})
    run.retried += 1
    return True


__all__ = ["run_search", "Hooks"]
