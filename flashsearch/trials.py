"""The trials table: one row per trial of the study (the single source of truth), and which rows count.

Everything is read back from the study; nothing here keeps state.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from flashsearch.atomic import atomic_path
from flashsearch.genome import Genome

# Columns always present in trials_frame (metric columns "metrics.<name>" follow them).
COLUMNS: tuple[str, ...] = (
    "number", "state", "genome_id", "summary", "n_layers", "d_model", "quality", "latency", "latency_source",
    "error", "error_kind", "retry_of", "attempt", "cached_from", "rung", "top_rung", "candidate", "origin", "parent", "mutation", "eval_seconds", "worker_node",
    "datetime_start", "datetime_complete", "duration_s", "genome_json", "params", "metrics",
)


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


__all__ = ["COLUMNS", "trials_frame", "write_trials", "published", "complete_trials"]
