"""How an evaluation ends, as data: the worker-side wrapper that never raises, and the failure kinds.

Faults never stop the search; each becomes a FAILED trial whose `error` says why and whose `error_kind` is one of
    rejected        the evaluator raised TrialFailed (it judged the candidate unusable)
    time_limit      the evaluator ran out of its own time budget (TimeLimitExceeded, e.g. budget.time_limit_s)
    invalid_result  non-finite / missing loss or latency
    invalid_params  the sampler's params do not decode into a genome
    error           any other exception in the evaluator (first line kept, traceback in `error_detail`)
    oom             MemoryError, torch's OutOfMemoryError / "CUDA out of memory", Ray's memory monitor
    timeout         the trial ran past `trial_timeout_s` and was cancelled (the Ray worker is killed)
    worker_died     the worker process died (killed, segfault, node lost)
    interrupted     the controller stopped while the trial was in flight (it is re-enqueued)
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Mapping

from flashsearch.errors import TimeLimitExceeded, TrialFailed

Evaluator = Callable[[str], Mapping[str, Any]]

# Kinds that may succeed on another try (search.retries, default 1): a loaded machine, a lost worker, a flaky
# resource. rejected / invalid_result are deterministic verdicts.
RETRYABLE = frozenset({"error", "oom", "timeout", "time_limit", "worker_died"})


def one_line(text: str, limit: int = 300) -> str:
    first = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return first if len(first) <= limit else first[: limit - 3] + "..."


def is_oom(exc: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError (any *OutOfMemoryError), or a RuntimeError saying so."""
    if isinstance(exc, MemoryError) or type(exc).__name__.endswith("OutOfMemoryError"):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def run_evaluator(evaluator: Evaluator, genome_json: str, rung: int | None = None) -> dict[str, Any]:
    """Runs on the worker. Never raises: failures come back as data, so nothing depends on pickling exceptions.
    rung: multi-fidelity rung index, passed as evaluator(genome_json, rung=rung) (None: single fidelity)."""
    t0 = time.perf_counter()
    try:
        result = evaluator(genome_json) if rung is None else evaluator(genome_json, rung=rung)
        if not isinstance(result, Mapping):
            return {"ok": True, "result": result, "seconds": time.perf_counter() - t0}
        return {"ok": True, "result": dict(result), "seconds": time.perf_counter() - t0}
    except TimeLimitExceeded as e:
        return {"ok": False, "kind": "time_limit", "error": one_line(e.reason) or "time limit exceeded",
                "seconds": time.perf_counter() - t0}
    except TrialFailed as e:
        return {"ok": False, "kind": "rejected", "error": one_line(e.reason) or "TrialFailed",
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # any evaluator bug or resource error is this trial's failure, not the search's
        oom = is_oom(e)
        text = one_line(f"{type(e).__name__}: {e}")
        return {"ok": False, "kind": "oom" if oom else "error", "error": f"out of memory: {text}" if oom else text,
                "seconds": time.perf_counter() - t0, "detail": traceback.format_exc()[-2000:]}


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


__all__ = ["Evaluator", "RETRYABLE", "one_line", "is_oom", "run_evaluator", "ray_failure"]
