"""`logger=wandb`: log every finished trial and the final Pareto table to Weights & Biases.

    flashsearch run search_spaces/hybrid_1b.yaml logger=wandb

Offline by default: unless the user set WANDB_MODE (e.g. `WANDB_MODE=online` after `wandb login`), the run is
written to disk only and can be uploaded later with `wandb sync OUT_DIR/wandb/offline-run-*`. The run directory
lives under the search's out_dir (`OUT_DIR/wandb/...`) unless WANDB_DIR says otherwise. The project defaults to
"flashsearch" (WANDB_PROJECT overrides it); the W&B run is named after the search (`name`).

What is logged, one history row per finished trial (done, cached replay or failed):
    trial, state, loss, latency_s, complete, failed, running, best_loss, best_latency_s, d_model, n_layers,
    params_b (full-size parameters, billions) and the scalar metrics of the evaluation (metrics/<name>)
and at the end: a `trials` table (number, state, loss, latency, pattern, width, error) and a `pareto` table
(rank, trial, loss, latency, pattern, d_model, params), both built from the study, plus summary values.

The logger is a progress listener (flashsearch.progress): the driver's events are all it sees, so a W&B
outage can never stop a search (a failing listener is disabled by the driver with a warning).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from flashsearch.errors import FlashsearchError
from flashsearch.progress import SearchEvent

INSTALL_HINT = "logger=wandb needs the wandb package: pip install 'flashsearch[wandb]' (or set logger=none)"


def require_wandb() -> Any:
    """Import wandb or raise the one-line user error telling how to install it."""
    try:
        import wandb
    except ImportError:
        raise FlashsearchError(INSTALL_HINT) from None
    return wandb


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


class WandbLogger:
    """Progress listener that mirrors a search into a W&B run. Call finish(study) at the end."""

    def __init__(self, *, name: str, out_dir: str | os.PathLike, config: Mapping[str, Any] | None = None,
                 project: str | None = None) -> None:
        wandb = require_wandb()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE") or "offline"
        run_dir = os.environ.get("WANDB_DIR") or str(out)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(project=project or os.environ.get("WANDB_PROJECT") or "flashsearch", name=name,
                              dir=run_dir, mode=mode, config=dict(config or {}), job_type="search",
                              settings=wandb.Settings(console="off", silent=True))
        self.trials: list[list[Any]] = []

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir).parent  # run.dir is <run>/files

    def __call__(self, e: SearchEvent) -> None:
        if e.kind not in ("trial_done", "trial_cached", "trial_failed"):
            return
        state = {"trial_done": "complete", "trial_cached": "cached", "trial_failed": "failed"}[e.kind]
        row: dict[str, Any] = {"trial": e.number, "state": state, "complete": e.complete, "failed": e.failed,
                               "running": e.running}
        if e.loss is not None:
            row["loss"], row["latency_s"] = e.loss, e.latency
        if e.best_loss is not None:
            row["best_loss"], row["best_latency_s"] = e.best_loss, e.best_latency
        if e.d_model is not None:
            row["d_model"], row["n_layers"] = e.d_model, e.n_layers
        for k, v in (e.metrics or {}).items():
            if k == "params" and _scalar(v):
                row["params_b"] = float(v) / 1e9
            elif _scalar(v):
                row[f"metrics/{k}"] = v
        self.run.log(row)
        self.trials.append([e.number, state, e.loss, e.latency, e.summary, e.d_model, e.latency_source,
                            e.reason, json.dumps(dict(e.params or {}), sort_keys=True, default=str)])

    def finish(self, study: Any = None, *, target_latency: float | None = None, exit_code: int = 0) -> None:
        """Log the trials and Pareto tables (from the study, the source of truth) and close the run."""
        wandb = self._wandb
        try:
            self.run.log({"trials": wandb.Table(
                columns=["trial", "state", "loss", "latency_s", "pattern", "d_model", "latency_source", "error",
                         "params"], data=self.trials)})
            if study is not None:
                from flashsearch.pareto import rank_front
                from flashsearch.trials import trials_frame

                front = rank_front(trials_frame(study), target_latency)
                cols = ["rank", "trial", "loss", "latency_s", "pattern", "d_model", "params_b", "genome_id"]
                data = []
                for rank, r in enumerate(front.to_dict("records"), start=1):
                    params, width = r.get("metrics.params"), r.get("d_model")
                    data.append([rank, int(r["number"]), float(r["quality"]), float(r["latency"]), r["summary"],
                                 None if width is None or width != width else int(width),
                                 None if params is None or params != params else float(params) / 1e9,
                                 r["genome_id"]])
                self.run.log({"pareto": wandb.Table(columns=cols, data=data)})
                if data:
                    self.run.summary["pareto_size"] = len(data)
                    self.run.summary["best_trial"], self.run.summary["best_loss"] = data[0][1], data[0][2]
                    self.run.summary["best_latency_s"] = data[0][3]
        finally:
            self.run.finish(exit_code=exit_code)


class Tee:
    """Send each progress event to several listeners (the console printer and a logger)."""

    def __init__(self, *listeners: Any) -> None:
        self.listeners = [x for x in listeners if x is not None]

    def __call__(self, event: SearchEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception as e:  # one broken listener (W&B down) must not silence the others
                import warnings

                warnings.warn(f"progress listener {type(listener).__name__} failed ({type(e).__name__}: {e}); "
                              "disabled", RuntimeWarning, stacklevel=2)
                self.listeners.remove(listener)


__all__ = ["WandbLogger", "Tee", "require_wandb", "INSTALL_HINT"]
