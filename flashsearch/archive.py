"""The archive: the study's trials as a table, the quality-latency Pareto front, and its hypervolume.

Everything is read back from the study (the single source of truth); nothing here keeps state.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from flashsearch.genome import Genome

# Columns always present in trials_frame (metric columns "metrics.<name>" follow them).
COLUMNS: tuple[str, ...] = (
    "number", "state", "genome_id", "summary", "n_layers", "d_model", "quality", "latency", "latency_source",
    "error", "error_kind", "retry_of", "attempt", "cached_from", "rung", "top_rung", "candidate", "origin", "parent", "mutation", "eval_seconds", "worker_node",
    "datetime_start", "datetime_complete", "duration_s", "genome_json", "params", "metrics",
)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one step, on error it is removed.

    Readers never see a half-written artifact (a crash mid-write leaves the previous file intact).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files; artifacts are meant to be shared like any other output (keep a replaced
        # file's mode).
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# ---- trials table ------------------------------------------------------------------------------------------
def _row(t: FrozenTrial) -> dict[str, Any]:
    ua = t.user_attrs
    genome_json = ua.get("genome")
    summary, n_layers, d_model = None, None, None
    if genome_json:
        try:
            g = Genome.from_json(genome_json)
            summary, n_layers, d_model = g.summary(), g.n_layers, g.d_model
        except Exception:  # a genome written by another version: keep the row, skip the derived columns
            pass
    values = t.values if t.state == TrialState.COMPLETE and t.values is not None else None
    start, end = t.datetime_start, t.datetime_complete
    metrics = ua.get("metrics")
    row: dict[str, Any] = {
        "number": t.number,
        "state": t.state.name,
        "genome_id": ua.get("genome_id"),
        "summary": summary,
        "n_layers": n_layers,
        "d_model": d_model,
        "quality": float(values[0]) if values else math.nan,
        "latency": float(values[1]) if values and len(values) > 1 else math.nan,
        "latency_source": ua.get("latency_source"),
        "error": ua.get("error"),
        "error_kind": ua.get("error_kind"),
        "retry_of": ua.get("retry_of"),
        "attempt": ua.get("attempt", 1),
        "cached_from": ua.get("cached_from"),
        # multi-fidelity (search/rungs.py): the rung trained to, the ladder's top, the candidate's screening trial
        "rung": ua.get("rung"),
        "top_rung": ua.get("top_rung"),
        "candidate": ua.get("candidate", t.number if "rung" in ua else None),
        "origin": t.system_attrs.get("aging:origin", "enqueued" if "fixed_params" in t.system_attrs else None),
        "parent": t.system_attrs.get("aging:parent"),
        "mutation": t.system_attrs.get("aging:mutation"),
        "eval_seconds": ua.get("eval_seconds"),
        "worker_node": ua.get("worker_node"),
        "datetime_start": start,
        "datetime_complete": end,
        "duration_s": (end - start).total_seconds() if start and end else math.nan,
        "genome_json": genome_json,
        "params": json.dumps(t.params, sort_keys=True, default=str),
        "metrics": json.dumps(metrics, sort_keys=True, default=str) if metrics is not None else None,
    }
    if isinstance(metrics, dict):
        row.update(_flatten(metrics, "metrics."))
    return row


def _flatten(d: dict, prefix: str) -> dict[str, Any]:
    """Scalar metrics as columns (nested dicts -> dotted names); lists such as curves stay in the JSON column."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[f"{prefix}{k}"] = v
    return out


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (all states), columns COLUMNS + flattened scalar metrics ("metrics.<name>")."""
    rows = [_row(t) for t in study.get_trials(deepcopy=False)]
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype=float if col in ("quality", "latency", "duration_s") else object)
    extra = sorted(c for c in df.columns if c not in COLUMNS)
    df = df[list(COLUMNS) + extra]
    for col in ("cached_from", "parent", "n_layers", "d_model", "retry_of", "attempt", "rung", "top_rung", "candidate"):
        df[col] = df[col].astype("Int64")
    for col in ("eval_seconds", "quality", "latency", "duration_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("datetime_start", "datetime_complete"):
        df[col] = pd.to_datetime(df[col])
    for col in extra:  # parquet needs one type per column: a metric that is sometimes a string becomes text
        kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1 and not kinds <= {int, float}:
            df[col] = df[col].map(lambda v: None if v is None else str(v))
    return df.reset_index(drop=True)


def write_trials(study_or_df: optuna.Study | pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the trials table as parquet, atomically."""
    df = study_or_df if isinstance(study_or_df, pd.DataFrame) else trials_frame(study_or_df)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


# ---- Pareto front and hypervolume ---------------------------------------------------------------------------
def pareto_mask(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boolean mask of non-dominated points (2-D minimization); equal points are all kept. O(n log n)."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    mask = np.zeros(len(pts), dtype=bool)
    if len(pts) == 0:
        return mask
    order = np.lexsort((pts[:, 1], pts[:, 0]))  # by x, then y
    best_y = math.inf
    i = 0
    while i < len(order):
        x = pts[order[i], 0]
        j = i
        while j < len(order) and pts[order[j], 0] == x:
            j += 1
        group_min = pts[order[i], 1]
        if group_min < best_y:  # a strictly-left point with y <= this one would dominate it
            for k in order[i:j]:
                if pts[k, 1] == group_min:
                    mask[k] = True
            best_y = group_min
        i = j
    return mask


def published(df: pd.DataFrame) -> pd.Series:
    """Rows whose result is published: all under single fidelity, the top rung's under multi-fidelity (losses of
    lower rungs come from shorter training and do not compare with it)."""
    if "rung" not in df.columns:
        return pd.Series(True, index=df.index)
    single = df["rung"].isna() | df["top_rung"].isna()
    return (single | (df["rung"] == df["top_rung"])).fillna(False).astype(bool)


def complete_trials(df: pd.DataFrame, one_per_genome: bool = False, all_rungs: bool = False) -> pd.DataFrame:
    """COMPLETE trials of a trials_frame with a finite loss and latency, in trial-number order; only published
    results (the top rung under multi-fidelity) unless all_rungs.

    one_per_genome: drop cached replays of a genome (the earliest trial stands for it), so each architecture
    appears once.
    """
    ok = df[(df["state"] == "COMPLETE") & np.isfinite(df["quality"]) & np.isfinite(df["latency"])
            & (True if all_rungs else published(df))]
    ok = ok.sort_values("number")
    if one_per_genome and "genome_id" in ok.columns:
        has_id = ok["genome_id"].notna()
        ok = pd.concat([ok[has_id].drop_duplicates("genome_id", keep="first"), ok[~has_id]])
    return ok


def pareto_front(df: pd.DataFrame) -> pd.DataFrame:
    """Non-dominated COMPLETE trials of a trials_frame (minimize quality and latency), one per genome, sorted
    by latency; under multi-fidelity, of the top rung's results only."""
    ok = complete_trials(df, one_per_genome=True)
    if ok.empty:
        return ok.copy()
    mask = pareto_mask(ok[["latency", "quality"]].to_numpy())
    return ok[mask].sort_values(["latency", "quality", "number"]).reset_index(drop=True)


def rank_front(df: pd.DataFrame, target_latency: float | None = None) -> pd.DataFrame:
    """The Pareto front ranked best first: by loss; under a target, the trials meeting it come first."""
    front = pareto_front(df)
    if front.empty:
        return front
    meets = front["latency"] <= target_latency if target_latency is not None else True
    front = front.assign(meets_target=meets)
    return front.sort_values(["meets_target", "quality", "latency", "number"],
                             ascending=[False, True, True, True]).reset_index(drop=True)


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume of 2-D points (both minimized) w.r.t. `reference`; points not better than it add 0."""
    rx, ry = float(reference[0]), float(reference[1])
    pts = np.asarray([p for p in points if p[0] < rx and p[1] < ry], dtype=float).reshape(-1, 2)
    if len(pts) == 0:
        return 0.0
    front = pts[pareto_mask(pts)]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    volume = 0.0
    for i, (x, y) in enumerate(front):
        next_x = front[i + 1, 0] if i + 1 < len(front) else rx
        volume += (next_x - x) * (ry - y)  # slab from this point to the next one to its right
    return float(volume)


__all__ = ["trials_frame", "write_trials", "complete_trials", "published", "pareto_front", "pareto_mask", "rank_front", "hypervolume", "atomic_path",
           "write_text_atomic", "COLUMNS"]
