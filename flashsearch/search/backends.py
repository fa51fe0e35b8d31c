"""Where evaluations run: Ray tasks (local Ray, or a cluster by address) or threads of this process.

A backend submits a genome to a worker and hands back outcomes (search/failures.py) as they land; it never
raises for a failed evaluation.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Hashable, Protocol, Sequence

from flashsearch.errors import FlashsearchError
from flashsearch.search.failures import Evaluator, one_line, ray_failure, run_evaluator

LOCAL = "local"  # ray_address value that runs workers as threads in this process


class Backend(Protocol):
    def submit(self, genome_json: str, rung: int | None = None) -> Hashable: ...
    def wait_one(self, handles: Sequence[Hashable], timeout: float | None) -> tuple[Hashable, dict] | None: ...
    def cancel(self, handle: Hashable) -> None: ...
    def close(self) -> None: ...


class ThreadBackend:
    """Workers as threads of this process (ray_address="local").

    One daemon thread per task (the driver keeps at most W in flight): a thread cannot be killed, so a trial
    that times out is failed and its thread abandoned; it no longer counts against W and cannot block exit.
    The W evaluations share torch's process-wide RNG and thread count: the quality proxy seeds and initialises
    each model under a lock and sets the thread count once for all (proxies/quality/train_loop.py, threads.py), so the same
    genome gets the same result however evaluations interleave.
    """

    def __init__(self, evaluator: Evaluator, workers: int) -> None:
        self._evaluator = evaluator
        self._n = 0

    def submit(self, genome_json: str, rung: int | None = None) -> Future:
        fut: Future = Future()
        fut.set_running_or_notify_cancel()

        def work() -> None:
            try:
                fut.set_result(run_evaluator(self._evaluator, genome_json, rung))
            except BaseException as e:  # noqa: BLE001 - run_evaluator never raises; belt and braces
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


def run_on_ray_node(evaluator: Evaluator, genome_json: str, rung: int | None = None) -> dict[str, Any]:
    """run_evaluator inside a Ray task, plus the id of the node it ran on (trials record where they ran)."""
    import ray

    outcome = run_evaluator(evaluator, genome_json, rung)
    outcome["node"] = ray.get_runtime_context().get_node_id()
    return outcome


class RayBackend:
    """Workers as Ray tasks; starts (and later stops) a local Ray unless one is running or an address is given."""

    def __init__(self, evaluator: Evaluator, workers: int, address: str | None, num_cpus: float,
                 num_gpus: float) -> None:
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
                # address="local" starts a fresh instance whatever Ray's temp dir says: after a local cluster was
                # killed, the ray_current_cluster file it leaves would make a plain init() try to join the dead
                # cluster (and refuse num_cpus). Loopback only: a local run has no business on the network.
                ray.init(address="local", num_cpus=max(int(math.ceil(workers * num_cpus)), 1),
                         include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                         _node_ip_address="127.0.0.1")
            self._started = True
        # max_retries=0: a crashed worker fails its trial (with the reason) instead of silently re-running.
        self._task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(run_on_ray_node)
        self._evaluator_ref = ray.put(evaluator)  # ship the evaluator once, not with every task

    def submit(self, genome_json: str, rung: int | None = None) -> Any:
        return self._task.remote(self._evaluator_ref, genome_json, rung)

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


def make_backend(evaluator: Evaluator, workers: int, ray_address: str | None, num_cpus_per_trial: float,
                 num_gpus_per_trial: float) -> Backend:
    if ray_address == LOCAL:
        return ThreadBackend(evaluator, workers)
    return RayBackend(evaluator, workers, ray_address, num_cpus_per_trial, num_gpus_per_trial)


__all__ = ["Backend", "ThreadBackend", "RayBackend", "make_backend", "LOCAL"]
