"""Where evaluations run: Ray tasks (local Ray, or a cluster by address), threads of this process, or, with
ray.workers_per_trial > 1, Ray Train worker groups that train one candidate data-parallel (docs/cluster.md).

A backend submits a genome to a worker and hands back outcomes (search/failures.py) as they land; it never
raises for a failed evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, Hashable, Protocol, Sequence

from flashsearch.config import RayConfig
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


# ---- data parallel: one candidate trained by several Ray Train workers (torch DDP) --------------------------------

# Times Ray Train restarts a trial's worker group after a worker died (killed, node lost, out of memory); the
# restarted training continues from the candidate's last rung checkpoint (proxies/quality/checkpoint.py).
WORKER_GROUP_RESTARTS = 2
# Outcomes a rank reaches together with every other rank (the loss and the time limit are agreed over the group,
# proxies/quality/distributed.py): returned as the trial's verdict. Any other failure may be one rank's alone,
# with the others waiting in a collective: it is raised, so Ray Train stops the whole group.
_AGREED = frozenset({"rejected", "time_limit", "invalid_result"})


def train_candidate_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: every rank runs the evaluator (the quality proxy finds the process group
    that TorchTrainer set up and trains its share of each batch); rank 0 writes the outcome, the trial's, as a
    JSON file in the trainer's run folder (shared storage), read by fit_data_parallel."""
    import ray
    import ray.train

    outcome = run_evaluator(config["evaluator"], config["genome_json"], config["rung"])
    if not outcome["ok"] and outcome["kind"] not in _AGREED:
        raise RuntimeError(outcome["error"])
    if ray.train.get_context().get_world_rank() == 0:
        from flashsearch.atomic import atomic_path

        outcome["node"] = ray.get_runtime_context().get_node_id()
        with atomic_path(config["outcome_file"]) as tmp:
            Path(tmp).write_text(json.dumps(outcome), encoding="utf-8")


def fit_data_parallel(evaluator: Evaluator, genome_json: str, rung: int | None, workers: int, cpus: float,
                      gpus: int, storage: str) -> dict[str, Any]:
    """One candidate trained by `workers` Ray Train workers (runs in a Ray task): its outcome, never raising."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    name = f"trial-{uuid.uuid4().hex[:12]}"
    outcome_file = os.path.join(storage, name, "outcome.json")
    trainer = TorchTrainer(
        train_candidate_worker,
        train_loop_config={"evaluator": evaluator, "genome_json": genome_json, "rung": rung,
                           "outcome_file": outcome_file},
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(gpus),
                                     resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})}),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=WORKER_GROUP_RESTARTS)))
    t0 = time.perf_counter()
    try:
        trainer.fit()
        outcome = json.loads(Path(outcome_file).read_text(encoding="utf-8"))
    except Exception as e:  # TrainingFailedError: a rank's error, or workers that kept dying
        detail = one_line(str(e))
        return {"ok": False, "kind": "worker_died" if "died" in detail.lower() else "error",
                "error": one_line(f"data-parallel training failed: {detail}"), "seconds": time.perf_counter() - t0}
    finally:
        shutil.rmtree(os.path.join(storage, name), ignore_errors=True)  # Ray Train's run folder: done with it
    outcome["workers"] = workers
    return outcome


class DataParallelBackend(RayBackend):
    """Each trial is one Ray task (holding no resources) that runs a TorchTrainer of `workers_per_trial` workers,
    each with num_cpus_per_trial / workers_per_trial CPUs and gpus_per_worker GPUs. Cancelling the task ends its
    trainer (the trainer's actors share its fate)."""

    def __init__(self, evaluator: Evaluator, workers: int, address: str | None, num_cpus_per_trial: float,
                 workers_per_trial: int, gpus_per_worker: int, storage: str) -> None:
        super().__init__(evaluator, workers, address, num_cpus_per_trial, 0.0)
        self._fit = self._ray.remote(num_cpus=0, max_retries=0)(fit_data_parallel)
        self._args = (workers_per_trial, num_cpus_per_trial / workers_per_trial, gpus_per_worker, storage)

    def submit(self, genome_json: str, rung: int | None = None) -> Any:
        return self._fit.remote(self._evaluator_ref, genome_json, rung, *self._args)


def make_backend(evaluator: Evaluator, workers: int, ray: RayConfig, storage: str | None = None) -> Backend:
    """The backend for a run's `ray:` settings, `workers` trials in flight. ray.workers_per_trial > 1:
    DataParallelBackend, whose Ray Train run folders (transient; rank 0 leaves the outcome there) go to `storage`:
    a folder every node sees, e.g. under the run directory on a cluster (default: a temp dir, one node only)."""
    if ray.address == LOCAL:
        return ThreadBackend(evaluator, workers)
    if ray.workers_per_trial > 1:
        storage = storage or os.path.join(tempfile.gettempdir(), "flashsearch-ray-train")
        return DataParallelBackend(evaluator, workers, ray.address, ray.num_cpus_per_trial, ray.workers_per_trial,
                                   ray.gpus_per_worker, os.path.abspath(storage))
    return RayBackend(evaluator, workers, ray.address, ray.num_cpus_per_trial, ray.num_gpus_per_trial)


__all__ = ["Backend", "ThreadBackend", "RayBackend", "DataParallelBackend", "make_backend", "LOCAL"]
