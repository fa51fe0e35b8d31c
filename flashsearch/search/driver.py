"""The search driver: ask the study for a candidate, evaluate it on a worker, tell the result; W at a time.

The Optuna study is the single source of truth. Each candidate is a trial whose user attributes carry the
genome (`genome`, `genome_id`, set as soon as the trial is asked so samplers can avoid in-flight duplicates)
and, once finished, `latency_source`, `metrics`, `eval_seconds` (or `error` for FAILED trials). Results are
told as they land, not generation by generation.

Workers are Ray tasks (`ray_address=None` starts a local Ray, `"auto"` or an address joins a cluster), or
threads in this process when `ray_address="local"` (for tests and debugging; no Ray involved).

One controller per study: on start, trials left RUNNING by a controller that died are failed as
"interrupted (controller stopped)" and their params re-enqueued, so they run again.

Faults never stop the search; each becomes a FAILED trial whose `error` says why and whose `error_kind` is one of
    rejected        the evaluator raised TrialFailed (it judged the candidate unusable)
    invalid_result  non-finite / missing loss or latency
    error           any other exception in the evaluator (first line kept, traceback in `error_detail`)
    oom             MemoryError, torch's OutOfMemoryError / "CUDA out of memory", Ray's memory monitor
    timeout         the trial ran past `trial_timeout_s` and was cancelled (the Ray worker is killed)
    worker_died     the worker process died (killed, segfault, node lost)
With `retries=N`, a trial that failed for a transient kind (error, oom, timeout, worker_died) is enqueued again
with the same params, at most N times per genome; the new trial records `retry_of` (the failed trial number) and
`attempt` (1 = first try). rejected / invalid_result are deterministic verdicts and are not retried.
"""

from __future__ import annotations

import json
import math
import time
import traceback
import warnings
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping, Protocol, Sequence

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from flashsearch.errors import FlashsearchError, TrialFailed
from flashsearch.genome import Genome
from flashsearch.progress import EventKind, ProgressListener, SearchEvent, format_duration
from flashsearch.space import SearchSpace

Evaluator = Callable[[str], Mapping[str, Any]]

LOCAL = "local"  # ray_address value that runs workers as threads in this process
SEEDS_ATTR = "flashsearch:seeds_enqueued"
INTERRUPTED = "interrupted (controller stopped)"
_RESERVED = ("loss", "latency", "latency_source")
RETRYABLE = frozenset({"error", "oom", "timeout", "worker_died"})


@dataclass
class SearchSummary:
    n_trials: int                   # COMPLETE trials asked for
    complete: int                   # COMPLETE trials in the study at the end (earlier runs included)
    evaluated: int = 0              # evaluated by a worker in this run
    cached: int = 0                 # completed from an identical genome's result in this run
    failed: int = 0                 # failed in this run
    recovered: int = 0              # orphaned RUNNING trials failed and re-enqueued at start
    retried: int = 0                # failed trials re-enqueued (search.retries) in this run
    stopped: str = "completed"      # completed | max_failures | timeout | interrupted
    elapsed_s: float = 0.0
    best_number: int | None = None
    best_loss: float | None = None
    best_latency: float | None = None
    last_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.stopped == "completed"

    @property
    def n_complete(self) -> int:
        return self.complete

    @property
    def n_failed(self) -> int:
        return self.failed

    def line(self) -> str:
        retried = f", {self.retried} retried" if self.retried else ""
        s = (f"{self.complete}/{self.n_trials} complete ({self.evaluated} evaluated, {self.cached} cached, "
             f"{self.failed} failed{retried}) in {format_duration(self.elapsed_s)}")
        if self.best_number is not None:
            s += f"; best loss {self.best_loss:.4g} @ {self.best_latency:.3g} s (trial #{self.best_number})"
        if self.stopped == "max_failures":
            s += f"; stopped early after {self.failed} failures (last: {self.last_error})"
        elif self.stopped != "completed":
            s += f"; stopped: {self.stopped}"
        return s

    def __str__(self) -> str:
        return self.line()


# ---- running one evaluation (inside a worker) ------------------------------------------------------------
def one_line(text: str, limit: int = 300) -> str:
    first = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return first if len(first) <= limit else first[: limit - 3] + "..."


def is_oom(exc: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError (any *OutOfMemoryError), or a RuntimeError saying so."""
    if isinstance(exc, MemoryError) or type(exc).__name__.endswith("OutOfMemoryError"):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def _run_evaluator(evaluator: Evaluator, genome_json: str) -> dict[str, Any]:
    """Runs on the worker. Never raises: failures come back as data, so nothing depends on pickling exceptions."""
    t0 = time.perf_counter()
    try:
        result = evaluator(genome_json)
        if not isinstance(result, Mapping):
            return {"ok": True, "result": result, "seconds": time.perf_counter() - t0}
        return {"ok": True, "result": dict(result), "seconds": time.perf_counter() - t0}
    except TrialFailed as e:
        return {"ok": False, "kind": "rejected", "error": one_line(e.reason) or "TrialFailed",
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # any evaluator bug or resource error is this trial's failure, not the search's
        oom = is_oom(e)
        text = one_line(f"{type(e).__name__}: {e}")
        return {"ok": False, "kind": "oom" if oom else "error", "error": f"out of memory: {text}" if oom else text,
                "seconds": time.perf_counter() - t0, "detail": traceback.format_exc()[-2000:]}


# ---- worker backends -------------------------------------------------------------------------------------
class _Backend(Protocol):
    def submit(self, genome_json: str) -> Hashable: ...
    def wait_one(self, handles: Sequence[Hashable], timeout: float | None) -> tuple[Hashable, dict] | None: ...
    def cancel(self, handle: Hashable) -> None: ...
    def close(self) -> None: ...


class _ThreadBackend:
    """Workers as threads of this process (ray_address="local").

    One daemon thread per task (the driver keeps at most W in flight): a thread cannot be killed, so a trial
    that times out is failed and its thread abandoned; it no longer counts against W and cannot block exit.
    """

    def __init__(self, evaluator: Evaluator, workers: int) -> None:
        self._evaluator = evaluator
        self._n = 0

    def submit(self, genome_json: str) -> Future:
        fut: Future = Future()
        fut.set_running_or_notify_cancel()

        def work() -> None:
            try:
                fut.set_result(_run_evaluator(self._evaluator, genome_json))
            except BaseException as e:  # noqa: BLE001 - _run_evaluator never raises; belt and braces
                fut.set_result({"ok": False, "kind": "error", "error": one_line(f"{type(e).__name__}: {e}"),
                                "seconds": 0.0})

        self._n += 1
        threading.Thread(target=work, name=f"flashsearch-worker-{self._n}", daemon=True).start()
        return fut

    def wait_one(self, handles: Sequence[Future], timeout: float | None) -> tuple[Future, dict] | None:
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        if not done:
            return None
        fut = min(done, key=handles.index)  # deterministic pick when several finished together
        return fut, fut.result()

    def cancel(self, handle: Future) -> None:
        pass  # a running thread cannot be stopped; its result is ignored

    def close(self) -> None:
        pass


class _RayBackend:
    """Workers as Ray tasks; starts (and later stops) a local Ray unless one is running or an address is given."""

    def __init__(self, evaluator: Evaluator, workers: int, address: str | None, num_cpus: float,
                 num_gpus: float) -> None:
        import logging

        import ray

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address:
                try:
                    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise FlashsearchError(
                        f"cannot join the Ray cluster at ray.address={address!r} ({detail}); start it with "
                        "`ray start --head`, fix the address, or drop ray.address to run locally") from None
            else:
                ray.init(num_cpus=max(int(math.ceil(workers * num_cpus)), 1), include_dashboard=False,
                         log_to_driver=False, logging_level=logging.WARNING)
            self._started = True
        # max_retries=0: a crashed worker fails its trial (with the reason) instead of silently re-running.
        self._task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_run_evaluator)
        self._evaluator_ref = ray.put(evaluator)  # ship the evaluator once, not with every task

    def submit(self, genome_json: str) -> Any:
        return self._task.remote(self._evaluator_ref, genome_json)

    def wait_one(self, handles: Sequence[Any], timeout: float | None) -> tuple[Any, dict] | None:
        ready, _ = self._ray.wait(list(handles), num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        try:
            return ref, self._ray.get(ref)
        except Exception as e:  # worker died, out of memory, task cancelled, node lost ...
            return ref, ray_failure(e)

    def cancel(self, handle: Any) -> None:
        try:
            self._ray.cancel(handle, force=True)
        except Exception:
            pass  # already finished

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def ray_failure(exc: BaseException) -> dict[str, Any]:
    """A Ray-level failure (the task never returned) as an outcome: worker died / out of memory / other."""
    from ray import exceptions as rx

    name = type(exc).__name__
    died = tuple(getattr(rx, n) for n in ("WorkerCrashedError", "LocalRayletDiedError", "NodeDiedError",
                                          "ActorDiedError", "RaySystemError") if hasattr(rx, n))
    if isinstance(exc, getattr(rx, "OutOfMemoryError", ())) or is_oom(exc):
        return {"ok": False, "kind": "oom", "seconds": 0.0,
                "error": one_line(f"out of memory: the worker was killed ({name}: {exc})")}
    if isinstance(exc, died):
        return {"ok": False, "kind": "worker_died", "seconds": 0.0,
                "error": one_line(f"worker died ({name}): {exc}")}
    return {"ok": False, "kind": "error", "seconds": 0.0, "error": one_line(f"worker error: {name}: {exc}")}


# ---- the driver ------------------------------------------------------------------------------------------
@dataclass
class _Pending:
    trial: Trial
    genome: Genome
    started: float
    deadline: float = math.inf      # monotonic time after which the trial is cancelled (trial_timeout_s)
    attempt: int = 1                # 1 = first try; retries count up


@dataclass
class _Cached:
    number: int
    values: tuple[float, float]
    latency_source: Any
    metrics: Any


@dataclass
class _Best:
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
class _Run:
    """Mutable bookkeeping of one run_search call."""

    n_trials: int
    t0: float
    progress: ProgressListener | None
    best: _Best
    cache: dict[str, _Cached] = field(default_factory=dict)
    complete: int = 0
    evaluated: int = 0
    cached: int = 0
    failed: int = 0
    running: int = 0
    retried: int = 0
    last_error: str | None = None
    trial_timeout_s: float | None = None
    retries: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def eta(self) -> float | None:
        done = self.evaluated + self.cached
        if done == 0:
            return None
        return max(0, self.n_trials - self.complete) * self.elapsed() / done

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


def run_search(
    study: optuna.Study,
    space: SearchSpace,
    evaluator: Evaluator,
    *,
    n_trials: int,
    workers: int,
    ray_address: str | None = None,
    num_cpus_per_trial: float = 1,
    num_gpus_per_trial: float = 0,
    seeds: Iterable[Mapping[str, Any]] = (),
    progress: ProgressListener | None = None,
    max_failures: int | None = None,
    timeout_s: float | None = None,
    target_latency: float | None = None,
    trial_timeout_s: float | None = None,
    retries: int = 0,
    stop: threading.Event | None = None,
) -> SearchSummary:
    """Run until the study holds `n_trials` COMPLETE trials (earlier runs count), W=`workers` in flight.

    evaluator(genome_json) -> {"loss", "latency", "latency_source", ...extra metrics}; raises TrialFailed (or
    anything) on failure. seeds: space params enqueued once per study (ahead of sampled trials).
    max_failures: failures in this run before stopping early (default max(10, n_trials)).
    timeout_s: no new trials after this many seconds; trials in flight are finished.
    trial_timeout_s: a trial running longer is cancelled (its Ray worker killed) and FAILED "timeout after N s".
    retries: re-run a trial that failed for a transient reason (see module doc) up to this many times.
    stop: when set (e.g. by a signal handler), stop at the next safe point as on KeyboardInterrupt: trials in
        flight are cancelled, failed as interrupted and re-queued, then KeyboardInterrupt is raised. Unlike an
        exception raised by a handler, it never lands inside a storage write.
    target_latency: only for the "best so far" shown in progress (defaults to the sampler's target, if any).
    """
    _check_study(study)
    if n_trials < 0 or workers < 1:
        raise FlashsearchError(f"need search.trials >= 0 and search.workers >= 1, got {n_trials} and {workers}")
    seeds = [dict(p) for p in seeds]
    for i, p in enumerate(seeds):  # validate all before enqueueing any: nothing half-written
        try:
            space.validate(p)
        except FlashsearchError as e:
            raise FlashsearchError(f"seed {i}: {e}") from None
    if trial_timeout_s is not None and not (trial_timeout_s > 0):
        raise FlashsearchError(f"search.trial_timeout_s must be a positive number of seconds, got {trial_timeout_s}")
    if retries < 0:
        raise FlashsearchError(f"search.retries must be >= 0, got {retries}")
    budget = max(10, n_trials) if max_failures is None else int(max_failures)
    if target_latency is None:
        target_latency = getattr(study.sampler, "target_latency", None)

    run = _Run(n_trials=n_trials, t0=time.monotonic(), progress=progress, best=_Best(target_latency),
               trial_timeout_s=None if trial_timeout_s is None else float(trial_timeout_s), retries=int(retries))
    recovered = recover_orphans(study, space)
    enqueue_seeds(study, seeds)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        _remember(run, t)
    summary = SearchSummary(n_trials=n_trials, complete=run.complete, recovered=recovered)
    run.emit("start", message=f"{run.complete} complete, {recovered} interrupted trial(s) re-queued, "
                              f"{workers} worker(s)" + (" (in-process)" if ray_address == LOCAL else ""))
    if run.complete >= n_trials:
        return _finish(run, summary, "completed")

    backend: _Backend
    if ray_address == LOCAL:
        backend = _ThreadBackend(evaluator, workers)
    else:
        backend = _RayBackend(evaluator, workers, ray_address, num_cpus_per_trial, num_gpus_per_trial)
    dists = space.distributions()
    deadline = None if timeout_s is None else run.t0 + float(timeout_s)
    in_flight: dict[Hashable, _Pending] = {}
    stopped: str | None = None
    try:
        while True:
            while stopped is None and len(in_flight) < workers and run.complete + len(in_flight) < n_trials:
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                if deadline is not None and time.monotonic() >= deadline:
                    stopped = "timeout"
                    break
                _ask_one(study, space, dists, backend, run, in_flight)
                if run.failed > budget:
                    stopped = "max_failures"
            if stopped == "max_failures":
                for handle, p in list(in_flight.items()):
                    backend.cancel(handle)
                    _abandon(study, p.trial._trial_id, f"cancelled: search stopped after {run.failed} failures")
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
                    _tell(study, run, p, {"ok": False, "kind": "timeout", "seconds": now - p.started,
                                          "error": f"timeout after {run.trial_timeout_s:g} s (search.trial_timeout_s)"})
                if not expired and deadline is not None and now >= deadline:
                    stopped = "timeout"  # deadline passed while waiting: finish what is in flight, ask nothing new
            else:
                handle, outcome = got
                pending = in_flight.pop(handle)
                run.running = len(in_flight)
                _tell(study, run, pending, outcome)
            if run.failed > budget:
                stopped = "max_failures"
    except KeyboardInterrupt:
        for handle, p in in_flight.items():
            backend.cancel(handle)
            _abandon(study, p.trial._trial_id, INTERRUPTED)
        in_flight.clear()
        recover_orphans(study, space)  # a trial interrupted while being asked (one controller per study)
        run.running = 0
        _finish(run, summary, "interrupted")
        raise
    finally:
        backend.close()
    return _finish(run, summary, "completed" if run.complete >= n_trials else (stopped or "completed"))


def _check_study(study: optuna.Study) -> None:
    if list(study.directions) != [StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]:
        raise FlashsearchError(
            "the study must have two objectives, both minimized (loss, latency); create it with "
            "optuna.create_study(directions=['minimize', 'minimize'])")


def _finish(run: _Run, summary: SearchSummary, stopped: str) -> SearchSummary:
    summary.complete, summary.evaluated, summary.cached = run.complete, run.evaluated, run.cached
    summary.failed, summary.last_error, summary.stopped = run.failed, run.last_error, stopped
    summary.retried = run.retried
    summary.elapsed_s = run.elapsed()
    if run.best.number is not None:
        summary.best_number, summary.best_loss, summary.best_latency = (
            run.best.number, run.best.loss, run.best.latency)
    run.emit("end", reason=stopped, message=summary.line())
    return summary


def _remember(run: _Run, t: FrozenTrial) -> None:
    """Count a COMPLETE trial and index its result by genome id (for dedup) and for the best-so-far."""
    run.complete += 1
    if t.values is None or len(t.values) < 2:
        return
    loss, latency = float(t.values[0]), float(t.values[1])
    gid = t.user_attrs.get("genome_id")
    if gid is not None and gid not in run.cache:
        run.cache[gid] = _Cached(t.number, (loss, latency), t.user_attrs.get("latency_source"),
                                 t.user_attrs.get("metrics"))
    run.best.offer(t.number, loss, latency)


def _ask_one(study: optuna.Study, space: SearchSpace, dists: Mapping, backend: _Backend, run: _Run,
             in_flight: dict[Hashable, _Pending]) -> None:
    trial = study.ask(fixed_distributions=dict(dists))
    try:
        # Baseline samplers (TPE, NSGA-II, random) may propose points outside the space's limits: repair.
        genome = space.decode(space.repair(dict(trial.params)))
    except Exception as e:
        _fail(study, run, trial, one_line(f"cannot decode params into a genome: {type(e).__name__}: {e}"),
              "invalid_params")
        return
    trial.set_user_attr("genome", genome.to_json())
    trial.set_user_attr("genome_id", genome.id)
    hit = run.cache.get(genome.id)
    if hit is not None:
        # Identical genome already evaluated: replay its result instead of spending a worker on it.
        trial.set_user_attr("cached_from", hit.number)
        trial.set_user_attr("latency_source", hit.latency_source)
        if hit.metrics is not None:
            trial.set_user_attr("metrics", hit.metrics)
        trial.set_user_attr("eval_seconds", 0.0)
        frozen = study.tell(trial, list(hit.values))
        run.cached += 1
        _remember(run, frozen)
        run.emit("trial_cached", number=trial.number, loss=hit.values[0], latency=hit.values[1],
                 latency_source=hit.latency_source, cached_from=hit.number, **_about(genome, trial.params))
        return
    attempt = int(trial.user_attrs.get("attempt", 1))
    started = time.monotonic()
    deadline = math.inf if run.trial_timeout_s is None else started + run.trial_timeout_s
    in_flight[backend.submit(genome.to_json())] = _Pending(trial, genome, started, deadline, attempt)
    run.running = len(in_flight)
    run.emit("trial_started", number=trial.number, **_about(genome, trial.params))


def _about(genome: Genome, params: Mapping[str, Any]) -> dict[str, Any]:
    """What progress listeners (the W&B logger) get to know about a trial's candidate."""
    return {"genome_id": genome.id, "summary": genome.summary(), "params": dict(params),
            "d_model": genome.d_model, "n_layers": genome.n_layers}


def _tell(study: optuna.Study, run: _Run, pending: _Pending, outcome: Mapping[str, Any]) -> None:
    trial = pending.trial
    seconds = float(outcome.get("seconds", time.monotonic() - pending.started))
    about = _about(pending.genome, trial.params)
    if not outcome.get("ok"):
        if outcome.get("detail"):
            trial.set_user_attr("error_detail", str(outcome["detail"]))
        trial.set_user_attr("eval_seconds", seconds)
        kind = str(outcome.get("kind") or "error")
        _fail(study, run, trial, str(outcome.get("error") or "unknown error"), kind, about)
        _maybe_retry(study, run, pending, kind)
        return
    result = outcome["result"]
    problem = _check_result(result)
    if problem is not None:
        trial.set_user_attr("eval_seconds", seconds)
        _fail(study, run, trial, problem, "invalid_result", about)
        return
    loss, latency = float(result["loss"]), float(result["latency"])
    source = str(result["latency_source"])
    trial.set_user_attr("latency_source", source)
    trial.set_user_attr("metrics", jsonable(_extras(result)))
    trial.set_user_attr("eval_seconds", seconds)
    frozen = study.tell(trial, [loss, latency])
    run.evaluated += 1
    _remember(run, frozen)
    run.emit("trial_done", number=trial.number, loss=loss, latency=latency, latency_source=source,
             metrics=_extras(result), **about)


def _extras(result: Mapping[str, Any]) -> dict[str, Any]:
    """Everything but loss/latency/latency_source; a nested "metrics" mapping is merged in (both styles work)."""
    extras = {k: v for k, v in result.items() if k not in _RESERVED and k != "metrics"}
    nested = result.get("metrics")
    if isinstance(nested, Mapping):
        extras.update(nested)
    elif nested is not None:
        extras["metrics"] = nested
    return extras


def _check_result(result: Any) -> str | None:
    if not isinstance(result, Mapping):
        return f"evaluator returned {type(result).__name__}, expected a dict with loss, latency, latency_source"
    missing = [k for k in _RESERVED if k not in result]
    if missing:
        return f"evaluator result lacks {', '.join(missing)}"
    for key in ("loss", "latency"):
        try:
            value = float(result[key])
        except (TypeError, ValueError):
            return f"evaluator returned a non-numeric {key}: {result[key]!r}"
        if not math.isfinite(value):
            return f"non-finite {key} ({value})"
    return None


def _fail(study: optuna.Study, run: _Run, trial: Trial, reason: str, kind: str = "error",
          about: Mapping[str, Any] | None = None) -> None:
    trial.set_user_attr("error", reason)
    trial.set_user_attr("error_kind", kind)
    study.tell(trial, state=TrialState.FAIL)
    run.failed += 1
    run.last_error = reason
    run.emit("trial_failed", number=trial.number, reason=reason, error_kind=kind, **(about or {}))


def _maybe_retry(study: optuna.Study, run: _Run, pending: _Pending, kind: str) -> None:
    """Enqueue the failed trial's params again (retry_of, attempt + 1) if retries are left for this kind."""
    if kind not in RETRYABLE or pending.attempt > run.retries:
        return
    number = pending.trial.number
    study.enqueue_trial(dict(pending.trial.params), user_attrs={"retry_of": number, "attempt": pending.attempt + 1})
    run.retried += 1


def _abandon(study: optuna.Study, trial_id: int, reason: str, expected: Iterable[str] | None = None) -> bool:
    """FAIL an unfinished trial with `reason` and enqueue its params again so a later run re-evaluates it
    (unless it was stopped while being asked: then its params may be half-written; `expected` = the space's
    parameter names, to recognise complete params of a trial whose genome attribute was not yet written)."""
    t = study._storage.get_trial(trial_id)
    if t.state.is_finished():
        return False
    study._storage.set_trial_user_attr(trial_id, "error", reason)
    study._storage.set_trial_user_attr(trial_id, "error_kind", "interrupted")
    study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    params = t.system_attrs.get("fixed_params") or t.params
    complete = "genome" in t.user_attrs or "fixed_params" in t.system_attrs or (
        expected is not None and set(expected) <= set(params or {}))
    if not complete:
        # Stopped while being asked (before its genome was decided, params possibly half-written): nothing to
        # re-run; the sampler proposes afresh.
        return True
    if params:  # an interrupted attempt does not count as one: keep its attempt number
        study.enqueue_trial(dict(params), user_attrs={"retry_of": t.number,
                                                      "attempt": int(t.user_attrs.get("attempt", 1))})
    return True


def recover_orphans(study: optuna.Study, space: SearchSpace | None = None) -> int:
    """Fail trials left RUNNING by a controller that stopped, and re-enqueue them; returns how many.

    Assumes one controller per study (the run dir's): a RUNNING trial at start has nobody working on it.
    WAITING trials (enqueued seeds / retries) need nothing: the next ask pops them.
    """
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    expected = None if space is None else list(space.distributions())
    return sum(_abandon(study, t._trial_id, INTERRUPTED, expected) for t in orphans)


def enqueue_seeds(study: optuna.Study, seeds: Sequence[Mapping[str, Any]]) -> int:
    """Enqueue seed params once per study (marked by a study user attribute); returns how many were enqueued."""
    if not seeds or study.user_attrs.get(SEEDS_ATTR):
        return 0
    for i, p in enumerate(seeds):
        study.enqueue_trial(dict(p), user_attrs={"seed": i})
    study.set_user_attr(SEEDS_ATTR, len(seeds))
    return len(seeds)


def jsonable(value: Any) -> Any:
    """Convert metrics to plain JSON types (numpy scalars, tuples, NaN -> None) for the study storage."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return jsonable(tolist())
    return json.loads(json.dumps(value, default=str))


__all__ = ["run_search", "SearchSummary", "recover_orphans", "enqueue_seeds", "jsonable", "LOCAL",
           "INTERRUPTED", "SEEDS_ATTR"]
