"""A resumable pool of short-training jobs, shared by the studies in experiments/.

Each job trains one genome with one ShortTrain setting. Results are appended to a CSV the moment they finish,
so an interrupted study picks up where it stopped (rerun the same command) and finished rows are never redone.
A row is reused only when both its key and its `settings` column (a hash of the proxy's resolved settings, the
tokens and the genome: experiments/lib/cachekey.py) match the job, so a changed default retrains it.
Jobs run in forked worker processes with one torch thread each (on a small CPU, N single-threaded trainings
beat one N-threaded training), longest first so the pool does not idle on a straggler at the end.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from flashsearch.genome import Genome

RESULT_COLUMNS = ["key", "settings", "genome_id", "tokens", "seed", "loss", "proxy_params", "seconds", "error"]
# Written to CSVs started since it was added; older CSVs keep their columns (it is then dropped, not an error).
OPTIONAL_COLUMNS = ["cpu_seconds",  # the training's process time: its cost, whatever else shares the cores
                    "curve"]        # its training curve, JSON [[step, bits/byte], ...] (train batches)


def curve_json(curve: Any) -> str:
    """A training curve [(step, bits/byte), ...] as the JSON the study CSVs keep."""
    return json.dumps([[int(step), round(float(value), 4)] for step, value in curve])


@dataclass(frozen=True)
class TrainJob:
    key: str                                   # unique within a study's CSV, e.g. "ref|3f2a...|s0"
    genome: Genome
    tokens: int
    proxy: Mapping[str, Any] = field(default_factory=dict)  # ShortTrain keyword arguments (seed included)
    tags: Mapping[str, Any] = field(default_factory=dict)   # extra columns copied into the result row

    def cost(self) -> float:
        """Relative CPU cost, for scheduling and the ETA: tokens x layers x (proxy width)^2-ish, plus overhead."""
        wd = int(self.proxy.get("width_divisor", 16))
        width = max(16, self.genome.d_model / wd)
        return self.tokens * self.genome.n_layers * (width / 64.0 + (width / 64.0) ** 2)

    @property
    def settings(self) -> str:
        """Hash of everything that changes this job's result (see the module doc)."""
        from experiments.lib.cachekey import proxy_digest

        return proxy_digest(self.proxy, self.tokens, self.genome.id)

    @property
    def identity(self) -> tuple[str, str]:
        return self.key, self.settings


_PROXIES: dict[tuple, Any] = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _wire(job: TrainJob) -> tuple:
    """What crosses the process boundary (genomes hold read-only mappings, which do not pickle)."""
    return job.key, job.settings, job.genome.to_json(), job.tokens, dict(job.proxy), dict(job.tags)


def _run_one(wired: tuple) -> dict[str, Any]:
    from flashsearch.errors import FlashsearchError, TrialFailed
    from flashsearch.proxies.base import Budget
    from flashsearch.proxies.quality.short_train import ShortTrain

    key, settings, genome_json, tokens, kwargs, tags = wired
    genome = Genome.from_json(genome_json)
    kwargs.setdefault("threads", 1)
    cache_key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
    proxy = _PROXIES.get(cache_key)
    if proxy is None:  # one proxy object per setting: the corpus is read once per worker
        proxy = _PROXIES[cache_key] = ShortTrain(**kwargs)
    row = {"key": key, "settings": settings, "genome_id": genome.id, "tokens": tokens, "seed": kwargs.get("seed", 0), **tags}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        res = proxy.evaluate(genome, Budget(tokens=tokens))
        row.update(loss=float(res.loss), proxy_params=int(res.proxy_params), error="",
                   curve=curve_json(res.curve))
    except (TrialFailed, FlashsearchError) as e:
        row.update(loss=math.nan, proxy_params=0, error=str(e))
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["cpu_seconds"] = round(time.process_time() - c0, 2)
    return row


def _read_done(path: Path) -> pd.DataFrame:
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    df = pd.read_csv(path, dtype={"key": str, "settings": str})
    if "settings" not in df.columns:
        raise ValueError(f"{path} predates settings hashes in cache keys, so its rows cannot be matched to the "
                         "settings that made them: move it away to start over")
    df["error"] = df["error"].fillna("").astype(str)  # an empty error reads back as NaN
    df["settings"] = df["settings"].astype(str)
    return df


def run_jobs(jobs: list[TrainJob], results_csv: str | Path, workers: int = 2, label: str = "") -> pd.DataFrame:
    """Run the jobs not yet in results_csv; return every row for these jobs (old and new)."""
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("job keys must be unique")
    path = Path(results_csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _read_done(path)
    have = set(zip(done["key"], done["settings"]))
    todo = sorted((j for j in jobs if j.identity not in have), key=TrainJob.cost, reverse=True)
    tag_cols = sorted({k for j in jobs for k in j.tags} - set(RESULT_COLUMNS))
    fresh = not path.exists() or path.stat().st_size == 0
    columns = RESULT_COLUMNS + OPTIONAL_COLUMNS + tag_cols if fresh else list(done.columns)
    missing = [c for c in RESULT_COLUMNS + tag_cols if c not in columns]
    if missing:
        raise ValueError(f"{path} was written by a different version of this study (no columns {missing}); "
                         "move it away to start over")
    prefix = f"[{label}] " if label else ""
    if len(done) and todo:
        print(f"{prefix}resuming: {len(jobs) - len(todo)}/{len(jobs)} jobs already in {path}", flush=True)
    if todo:
        _run_pool(todo, path, columns, fresh, workers, prefix)
    out = _read_done(path)
    wanted = {j.identity for j in jobs}
    mine = [ident in wanted for ident in zip(out["key"], out["settings"])]
    return out[mine].drop_duplicates(["key", "settings"]).reset_index(drop=True)


def _run_pool(todo: list[TrainJob], path: Path, columns: list[str], fresh: bool, workers: int, prefix: str) -> None:
    total_cost = sum(j.cost() for j in todo)
    cost_of = {j.key: j.cost() for j in todo}
    t0 = time.perf_counter()
    done_cost = 0.0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with open(path, "a", newline="") as fh, \
            mp.get_context("fork").Pool(max(1, workers), initializer=_init_worker) as pool:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if fresh:
            writer.writeheader()
        for i, row in enumerate(pool.imap_unordered(_run_one, [_wire(j) for j in todo]), 1):
            writer.writerow(row)
            fh.flush()  # a killed study keeps every finished row
            done_cost += cost_of[row["key"]]
            elapsed = time.perf_counter() - t0
            eta = elapsed * (total_cost - done_cost) / max(done_cost, 1e-9)
            status = f"loss {row['loss']:.4f}" if not row["error"] else f"FAILED ({row['error'][:60]})"
            print(f"{prefix}[{i}/{len(todo)}] {row['key']} {status} {row['seconds']:.1f}s | "
                  f"elapsed {elapsed / 60:.1f} min, eta {eta / 60:.1f} min", file=sys.stdout, flush=True)


def training_time(rows: pd.DataFrame) -> tuple[float, str]:
    """(summed seconds, clock) of result rows: their CPU time where every row has it, else their wall time."""
    if "cpu_seconds" in rows and len(rows) and rows["cpu_seconds"].notna().all():
        return float(rows["cpu_seconds"].sum()), "CPU"
    return float(rows["seconds"].sum()), "wall"
