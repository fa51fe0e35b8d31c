"""`flashsearch run`: validate everything, open (or resume) the study, search, then write the report.

Order matters for users: every check that can fail on bad input runs before the run directory is created, so
a bad config leaves nothing behind; after that, the study file is the source of truth and a rerun resumes it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from flashsearch.builders import build_latency, build_quality, build_seeds, build_space
from flashsearch.config import RunConfig, to_dict
from flashsearch.errors import FlashsearchError
from flashsearch.evaluate import CandidateEvaluator
from flashsearch.space import SearchSpace

STUDY_FILE = "study.journal"
FINGERPRINT_ATTR = "flashsearch_fingerprint"


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    n_complete: int
    n_failed: int
    seconds: float
    exported: tuple[Path, ...]


def fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """What must not change between a run and its resume: the space and both objectives' definitions."""
    return {"space": to_dict(cfg.space), "latency": to_dict(cfg.latency), "quality": to_dict(cfg.quality),
            "workload": to_dict(cfg.workload), "budget": to_dict(cfg.budget), "data": to_dict(cfg.data),
            "target_latency": cfg.search.target_latency}


def check_target_reachable(cfg: RunConfig, space: SearchSpace, predictor: Any) -> None:
    """Refuse a latency target that even the space's cheapest genomes miss (nothing could ever qualify)."""
    target = cfg.search.target_latency
    if target is None:
        return
    from flashsearch.proxies.base import Workload

    w = cfg.workload
    workload = Workload(device=w.device, batch=w.batch, prompt_len=w.prompt_len, decode_tokens=w.decode_tokens)
    best = min(float(predictor.predict(space.decode(p), workload)) for p in space.cheapest())
    if best > target:
        raise FlashsearchError(
            f"search.target_latency={target:g} s cannot be met: the fastest genome in the space takes {best:.3g} s "
            f"for {w.decode_tokens} decode tokens on {w.device}; raise the target above {best:.3g} or shrink the "
            "space (smaller widths, fewer blocks)")


def make_sampler(cfg: RunConfig, space: SearchSpace, predictor: Any) -> Any:
    import optuna

    s = cfg.search
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population, seed=cfg.seed)
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True, n_startup_trials=s.population)
    from flashsearch.proxies.base import Workload
    from flashsearch.search.aging import AgingEvolutionSampler

    w = cfg.workload
    workload = Workload(device=w.device, batch=w.batch, prompt_len=w.prompt_len, decode_tokens=w.decode_tokens)
    latency_fn = (lambda g: float(predictor.predict(g, workload))) if s.target_latency is not None else None
    return AgingEvolutionSampler(space, population=s.population, sample_size=s.sample_size,
                                 target_latency=s.target_latency, seed=cfg.seed, latency_fn=latency_fn)


def open_study(cfg: RunConfig, out_dir: Path, sampler: Any, force_new: bool) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = out_dir / STUDY_FILE
    if force_new and path.exists():
        path.unlink()
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name=cfg.name, storage=storage, directions=["minimize", "minimize"],
                                sampler=sampler, load_if_exists=True)
    mine = json.loads(json.dumps(fingerprint(cfg)))
    theirs = study.user_attrs.get(FINGERPRINT_ATTR)
    if theirs is None:
        study.set_user_attr(FINGERPRINT_ATTR, mine)
        with warnings.catch_warnings():  # set_metric_names is marked experimental; only optuna-dashboard reads it
            warnings.simplefilter("ignore")
            study.set_metric_names(["loss", "latency_s"])
    elif theirs != mine:
        changed = sorted(k for k in mine if mine.get(k) != theirs.get(k))
        raise FlashsearchError(
            f"{out_dir} holds a study with a different {', '.join(changed)}; resuming would mix incomparable "
            "trials. Use another out_dir=..., or pass --force-new to start this one over")
    return study


def run(cfg: RunConfig, *, force_new: bool = False, stream: TextIO | None = None) -> RunResult:
    stream = stream or sys.stderr
    t0 = time.time()
    space = build_space(cfg)
    predictor = build_latency(cfg)
    build_quality(cfg)                      # fail on bad proxy options now, not inside the first worker
    check_target_reachable(cfg, space, predictor)
    seeds, notes = build_seeds(cfg, space)
    for note in notes:
        print(f"note: {note}", file=stream)
    sampler = make_sampler(cfg, space, predictor)

    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FlashsearchError(f"out_dir {out_dir} exists and is not a directory; choose another out_dir=...")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        study = open_study(cfg, out_dir, sampler, force_new)
    except FlashsearchError:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    from flashsearch.progress import Progress
    from flashsearch.search.driver import run_search

    progress = Progress(total=cfg.search.trials, stream=stream)
    summary = run_search(
        study, space, CandidateEvaluator(cfg), n_trials=cfg.search.trials, workers=cfg.search.workers,
        ray_address=cfg.ray.address, num_cpus_per_trial=cfg.ray.num_cpus_per_trial,
        num_gpus_per_trial=cfg.ray.num_gpus_per_trial, seeds=seeds, progress=progress,
        max_failures=cfg.search.max_failures, target_latency=cfg.search.target_latency)

    from flashsearch.export import export_top
    from flashsearch.report import write_report

    write_report(study, out_dir, target_latency=cfg.search.target_latency)
    exported = export_top(study, out_dir / "export", cfg.export_top, target_latency=cfg.search.target_latency)
    return RunResult(out_dir=out_dir, n_complete=summary.complete, n_failed=summary.failed, seconds=time.time() - t0,
                     exported=tuple(exported))
