"""`flashsearch run`: validate everything, open (or resume) the study, search, then write the report.

Order matters for users: every check that can fail on bad input runs before the run directory is created (the
config, the space, the latency predictor and its table, the quality proxy and its training data, the seed
genomes, the latency target), so a bad config leaves nothing behind; after that, the study file is the source
of truth and a rerun resumes it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import yaml

from flashsearch.builders import build_latency, build_quality, build_seeds, build_space
from flashsearch.config import RunConfig, to_dict
from flashsearch.errors import FlashsearchError
from flashsearch.evaluate import CandidateEvaluator
from flashsearch.references import predict_references
from flashsearch.search.latency_target import LatencyTarget, predicted_seconds
from flashsearch.search import attrs
from flashsearch.search.lock import CONTROLLER_LOCK, ControllerLock
from flashsearch.search.samplers import build_sampler
from flashsearch.search.signals import graceful_stop
from flashsearch.search.storage import repair_journal
from flashsearch.space import SearchSpace
from flashsearch.user_imports import import_modules

STUDY_FILE = "study.journal"


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    n_complete: int
    n_failed: int
    seconds: float
    exported: tuple[Path, ...]


def fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """What must not change between a run and its resume: the space and both objectives' definitions."""
    budget = to_dict(cfg.budget)
    fidelity: dict[str, Any] = {}
    if cfg.search.fidelity == "multi":
        fidelity = {"fidelity": "multi"}
        budget["rungs"] = list(cfg.budget.ladder().tokens)  # the ladder as trained
    else:  # the ladder does not apply (and studies made before it existed resume)
        budget = {k: v for k, v in budget.items() if k not in ("rungs", "n_rungs", "eta")}
    return {"space": to_dict(cfg.space), "latency": to_dict(cfg.latency), "quality": to_dict(cfg.quality),
            "workload": to_dict(cfg.workload), "budget": budget, "data": to_dict(cfg.data),
            "target_latency": cfg.search.target_latency, **fidelity}



def latency_target_of(cfg: RunConfig, space: SearchSpace, predictor: Any, source: str) -> LatencyTarget | None:
    """The run's latency constraint (None in Pareto mode); refuses a target that cannot be solved or met.

    Target mode solves each candidate's width with the predictor (a few predictions per candidate), so it needs a
    cheap one: `measured` would build and time a full model for each. A target that even the space's cheapest
    genomes miss is refused too (nothing could ever qualify).
    """
    target = cfg.search.target_latency
    if target is None:
        return None
    if source.startswith("measured"):
        raise FlashsearchError(
            f"search.target_latency={target:g} needs a cheap latency predictor to solve each candidate's width, "
            "but latency=measured times a full model per prediction; use latency=roofline, lut or learned with "
            "the target (and measure the winners afterwards), or drop search.target_latency for Pareto mode")
    workload = cfg.workload
    constraint = LatencyTarget(space, partial(predicted_seconds, predictor, workload), target)
    w = cfg.workload
    best = min(constraint.latency(space.decode(p)) for p in space.cheapest())
    if best > target:
        raise FlashsearchError(
            f"search.target_latency={target:g} s cannot be met: the fastest genome in the space takes {best:.3g} s "
            f"for {w.decode_tokens} decode tokens on {w.device}; raise the target above {best:.3g} or shrink the "
            "space (smaller widths, fewer blocks)")
    return constraint


def open_study(cfg: RunConfig, out_dir: Path, sampler: Any, force_new: bool) -> Any:
    import optuna

    from flashsearch.search.storage import journal_storage

    path = out_dir / STUDY_FILE
    if force_new and path.exists():
        path.unlink()
    try:
        storage = journal_storage(path)
        if cfg.name in optuna.get_all_study_names(storage):  # load first: create_study would append a no-op
            study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler)
        else:
            study = optuna.create_study(study_name=cfg.name, storage=storage, directions=["minimize", "minimize"],
                                        sampler=sampler)
    except (ValueError, UnicodeDecodeError) as e:  # a line that is not JSON: damaged by hand or by the disk
        raise FlashsearchError(
            f"{path} is damaged and cannot be read ({type(e).__name__}: {e}); move it away, or pass --force-new "
            "to start this out_dir over") from None
    mine = json.loads(json.dumps(fingerprint(cfg)))
    theirs = study.user_attrs.get(attrs.FINGERPRINT)
    if theirs is None:
        study.set_user_attr(attrs.FINGERPRINT, mine)
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
    from flashsearch.proxies.base import latency_source

    import_modules(cfg.imports)             # user operators/plug-ins register before anything names them
    space = build_space(cfg)
    predictor = build_latency(cfg)
    source = latency_source(predictor)
    quality = build_quality(cfg)            # fail on bad proxy options now, not inside the first worker
    corpus = getattr(quality, "corpus", None)
    if callable(corpus):
        corpus()                            # read and check the training data now (empty file, wrong field ...)
    constraint = latency_target_of(cfg, space, predictor, source)
    seeds, notes = build_seeds(cfg, space)
    if constraint is not None:
        seeds, more = constraint.widest_seeds(seeds)
        notes += more
    for note in notes:
        print(f"note: {note}", file=stream)
    sampler = build_sampler(cfg, space, constraint)

    references, ref_notes = predict_references(predictor, cfg.workload, source)
    for note in ref_notes:
        print(f"note: {note}", file=stream)

    if cfg.logger == "wandb":
        from flashsearch.logging_wandb import require_wandb

        require_wandb()  # a missing package is a user error before anything is written

    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FlashsearchError(f"out_dir {out_dir} exists and is not a directory; choose another out_dir=...")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = ControllerLock(out_dir)
    try:
        lock.acquire()
        for note in repair_journal(out_dir / STUDY_FILE):
            print(f"note: {note}", file=stream)
        study = open_study(cfg, out_dir, sampler, force_new)
        if references and attrs.REFERENCES not in study.user_attrs:
            study.set_user_attr(attrs.REFERENCES, references)
    except FlashsearchError:
        lock.release()
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    try:
        return _search(cfg, study, space, seeds, out_dir, stream, t0)
    except FlashsearchError:
        # Bad input found only once searching starts (e.g. an unreachable ray.address): leave nothing behind
        # if this run created the directory and no trial was recorded.
        import optuna

        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        if created and not study.get_trials(deepcopy=False, states=done):  # queued seeds are not results
            lock.release()
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        lock.release()


def _search(cfg: RunConfig, study: Any, space: SearchSpace, seeds: list, out_dir: Path, stream: TextIO,
            t0: float) -> RunResult:
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    from flashsearch.progress import Progress
    from flashsearch.search.driver import Hooks, run_search
    from flashsearch.search.recovery import enqueue_seeds

    progress: Any = Progress(total=cfg.search.trials, stream=stream)
    logger = None
    if cfg.logger == "wandb":
        from flashsearch.logging_wandb import Tee, WandbLogger

        logger = WandbLogger(name=cfg.name, out_dir=out_dir, config=to_dict(cfg))
        progress = Tee(progress, logger)
    from flashsearch.export import export_top
    from flashsearch.report import write_report

    from flashsearch.proxies.quality.checkpoint import CHECKPOINT_DIR, remove_rung_checkpoints

    ladder = cfg.ladder()
    checkpoints = str((out_dir / CHECKPOINT_DIR).resolve()) if ladder is not None else None
    stop, restore = graceful_stop()
    hooks = Hooks(progress=progress, stop=stop,
                  rung_done=None if checkpoints is None else partial(remove_rung_checkpoints, checkpoints))
    try:
        enqueue_seeds(study, seeds, space)
        summary = run_search(study, space, CandidateEvaluator(cfg, checkpoints), cfg, hooks)
    except KeyboardInterrupt:
        restore()  # a second Ctrl-C while the report is written stops at once
        if logger is not None:
            logger.finish(exit_code=1)
        _report_interrupted(study, out_dir, cfg, stream)
        raise
    except BaseException:
        if logger is not None:
            logger.finish(exit_code=1)
        raise
    finally:
        restore()
    if logger is not None:
        logger.finish(study, target_latency=cfg.search.target_latency)
    if checkpoints is not None and summary.stopped == "completed":
        # Nothing is due any more: the rung checkpoints left belong to candidates that were not promoted. (A resume
        # with more trials that promotes one of them retrains it from scratch under the same schedule: same result.)
        shutil.rmtree(checkpoints, ignore_errors=True)

    write_report(study, out_dir, target_latency=cfg.search.target_latency)
    exported: list[Path] = []
    from flashsearch.pareto import pareto_front
    from flashsearch.trials import trials_frame

    if not pareto_front(trials_frame(study)).empty:
        exported = export_top(study, out_dir / "export", cfg.export_top, target_latency=cfg.search.target_latency)
    elif summary.complete and ladder is not None:  # possible when failures thinned a rung
        print(f"note: no candidate reached the top rung ({ladder.tokens[-1]} tokens), nothing exported; raise "
              "search.trials (resuming keeps what is done)", file=stream)
    else:  # a search whose every trial failed has nothing to export; its report says why
        print(f"note: no trial completed, nothing exported; see the errors in {out_dir / 'trials.parquet'}",
              file=stream)
    return RunResult(out_dir=out_dir, n_complete=summary.complete, n_failed=summary.failed, seconds=time.time() - t0,
                     exported=tuple(exported))


def _report_interrupted(study: Any, out_dir: Path, cfg: RunConfig, stream: TextIO) -> None:
    """After Ctrl-C / SIGTERM: write the report for the trials that completed, and say so."""
    import optuna

    from flashsearch.report import write_report

    n = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if n == 0:
        print("interrupted before any trial completed; no report written", file=stream)
        return
    paths = write_report(study, out_dir, target_latency=cfg.search.target_latency)
    print(f"interrupted: wrote the report for the {n} complete trial(s) to {out_dir}/ ("
          + ", ".join(p.name for p in paths.values()) + ")", file=stream)
