"""Controller overhead and worker throughput of the search driver.

Part 1 - controller cost per trial: the real driver (run_search: ask, dedup, submit, wait, tell, progress) with
the aging-evolution sampler and a no-op evaluator on in-process workers, so everything measured is the
controller. Reported as ms/trial in windows ending at checkpoints up to `trials` (goal: < 20 ms/trial), for
Optuna's in-memory storage and for the journal file that `flashsearch run` uses.

Part 2 - throughput through real Ray: a sleep evaluator (`sleep` s per trial) with W = 1, 2, 4, 8 workers
(goal: >= 0.8 x W trials per sleep period). "steady" excludes the first W completions (Ray worker start-up);
"overall" includes everything from the first ask to the last tell, Ray start-up excluded.

    python -m experiments run controller_overhead                  # 10,000 trials, W = 1,2,4,8, sleep 0.5 s
    python -m experiments run controller_overhead trials=2000 workers=[1,2]

Writes overhead_cpu.md to `out` with the revision, settings and machine.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import optuna  # noqa: E402

from flashsearch.config import RayConfig, RunConfig, SearchConfig  # noqa: E402
from flashsearch.genome import Genome  # noqa: E402
from flashsearch.search import AgingEvolutionSampler, Hooks, run_search  # noqa: E402
from flashsearch.space import StagedSpace  # noqa: E402

from experiments.lib.output import header, write_text  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = StagedSpace()


def noop(genome_json: str) -> dict:
    g = Genome.from_json(genome_json)
    return {"loss": 3.0 - 0.03 * g.n_mixers - 0.0002 * g.d_model + 0.05 * g.count("attention"),
            "latency": g.n_layers * g.d_model / 1000.0, "latency_source": "toy"}


def sleeper(seconds: float):
    def evaluate(genome_json: str) -> dict:  # nested: pickled by value for Ray workers
        import time as _t

        from flashsearch.genome import Genome as _G

        g = _G.from_json(genome_json)
        _t.sleep(seconds)
        return {"loss": 3.0 - 0.03 * g.n_mixers, "latency": float(g.n_layers), "latency_source": "toy"}
    return evaluate


def checkpoints(n: int) -> list[int]:
    marks = [100, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000, 15000, 20000]
    return [m for m in marks if m < n] + [n]


def controller_cost(storage_kind: str, n: int, seed: int = 0) -> list[tuple[int, float, float]]:
    """[(trials, ms/trial in the window ending here, cumulative s)] at checkpoints."""
    tmp = tempfile.TemporaryDirectory()
    storage = None
    if storage_kind == "journal":  # what `flashsearch run` uses: fsync on state changes only
        from flashsearch.search.storage import journal_storage

        storage = journal_storage(Path(tmp.name) / "study.journal")
    elif storage_kind == "journal-fsync-all":  # Optuna's own backend: fsync on every append
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(Path(tmp.name) / "study.journal")))
    study = optuna.create_study(directions=["minimize", "minimize"], storage=storage, study_name="overhead",
                                sampler=AgingEvolutionSampler(SPACE, population=100, sample_size=25, seed=seed))
    marks = checkpoints(n)
    out: list[tuple[int, float, float]] = []
    state = {"t0": 0.0, "last_t": 0.0, "last_n": 0}

    def progress(e) -> None:
        if e.kind == "start":
            state["t0"] = state["last_t"] = time.perf_counter()
        elif e.kind in ("trial_done", "trial_cached", "trial_failed") and e.complete in marks and \
                e.complete != state["last_n"]:
            now = time.perf_counter()
            out.append((e.complete, 1000 * (now - state["last_t"]) / (e.complete - state["last_n"]),
                        now - state["t0"]))
            state["last_t"], state["last_n"] = now, e.complete
            print(f"  {storage_kind:8s} {e.complete:6d} trials  {out[-1][1]:7.2f} ms/trial  ({out[-1][2]:.0f} s)",
                  file=sys.stderr, flush=True)

    config = RunConfig(search=SearchConfig(trials=n, workers=1, max_failures=n), ray=RayConfig(address="local"))
    run_search(study, SPACE, noop, config, Hooks(progress=progress))
    tmp.cleanup()
    return out


def ray_throughput(workers: int, sleep_s: float, per_worker: int) -> dict:
    n = per_worker * workers
    times: list[float] = []
    state = {"t0": 0.0}

    def progress(e) -> None:
        if e.kind == "start":
            state["t0"] = time.perf_counter()
        elif e.kind == "trial_done":
            times.append(time.perf_counter())

    import ray

    t_init = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    t_ready = time.perf_counter()
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=AgingEvolutionSampler(SPACE, population=max(4, workers), sample_size=2,
                                                              seed=0))
    try:
        config = RunConfig(search=SearchConfig(trials=n, workers=workers), ray=RayConfig(num_cpus_per_trial=1))
        run_search(study, SPACE, sleeper(sleep_s), config, Hooks(progress=progress))
    finally:
        ray.shutdown()
    times.sort()
    overall = len(times) / (times[-1] - state["t0"]) * sleep_s
    steady = (len(times) - workers) / (times[-1] - times[workers - 1]) * sleep_s if len(times) > workers else 0.0
    return {"workers": workers, "trials": n, "ray_init_s": t_ready - t_init, "overall_x": overall,
            "steady_x": steady, "wall_s": times[-1] - state["t0"]}


def machine() -> str:
    return (f"{platform.machine()} (CPU cores shared with other jobs while measured; timings are noisy), "
            f"optuna {optuna.__version__}, ray {__import__('ray').__version__}")


@dataclass(frozen=True)
class Settings:
    trials: int                  # controller-cost trials per storage
    storages: tuple[str, ...]    # memory, journal, journal-fsync-all
    fsync_all_trials: int        # trials for journal-fsync-all (Optuna's backend, ~25 fsyncs per trial: slow)
    workers: tuple[int, ...]     # Ray throughput: W values
    sleep: float                 # seconds per trial of the sleep evaluator
    per_worker: int              # trials per worker in the Ray throughput runs
    out: str                     # folder for overhead_cpu.md


def main(args: Settings, meta: dict) -> None:
    lines = [header("Controller overhead and Ray throughput", meta).rstrip("\n"), f"- software: {machine()}", ""]
    lines += ["## Controller cost per trial (no-op evaluator, in-process, aging sampler P=100 S=25)", "",
              "Goal: < 20 ms/trial. Each value is the mean over the window that ends at that trial count. "
              "journal = flashsearch.search.storage.JournalFile as `flashsearch run` uses it (fsync on trial state "
              "changes only); journal-fsync-all = Optuna's JournalFileBackend (fsync on every append).", ""]
    results = {}
    for kind in args.storages:
        n = min(args.trials, args.fsync_all_trials) if kind == "journal-fsync-all" else args.trials
        print(f"controller cost, {kind} storage, {n} trials", file=sys.stderr)
        results[kind] = controller_cost(kind, n)
    marks = sorted({m for r in results.values() for m, _, _ in r})
    lines.append("| trials | " + " | ".join(f"{k} ms/trial" for k in results) + " |")
    lines.append("|---|" + "---|" * len(results))
    for m in marks:
        cells = []
        for r in results.values():
            hit = [ms for n, ms, _ in r if n == m]
            cells.append(f"{hit[0]:.2f}" if hit else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for k, r in results.items():
        lines.append(f"\n{k}: {r[-1][0]} trials in {r[-1][2]:.0f} s = {1000 * r[-1][2] / r[-1][0]:.2f} ms/trial "
                     "on average.")
    lines += ["", f"## Throughput through real Ray (sleep evaluator {args.sleep:g} s, {args.per_worker} trials per "
              "worker)", "", "Goal: >= 0.8 x W (trials finished per sleep period).", "",
              "| W | trials | Ray start (s) | wall (s) | overall (x) | steady (x) | steady / W |", "|---|---|---|---|---|---|---|"]
    for w in args.workers:
        print(f"ray throughput, W={w}", file=sys.stderr)
        r = ray_throughput(w, args.sleep, args.per_worker)
        print(f"  {r}", file=sys.stderr)
        lines.append(f"| {w} | {r['trials']} | {r['ray_init_s']:.1f} | {r['wall_s']:.1f} | {r['overall_x']:.2f} | "
                     f"{r['steady_x']:.2f} | {r['steady_x'] / w:.2f} |")
    print(write_text(Path(args.out) / "overhead_cpu.md", "\n".join(lines) + "\n").read_text())

