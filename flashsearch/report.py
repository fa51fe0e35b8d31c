"""Report of a search: the trials table (parquet), a static Pareto plot (PNG) and an interactive one (HTML).

    write_report(study, out_dir)  ->  out_dir/trials.parquet, out_dir/pareto.png, out_dir/pareto.html

Every file is written atomically (temp file + rename), so a report is either the old one or the new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from flashsearch.archive import atomic_path, pareto_front, trials_frame, write_text_atomic, write_trials  # noqa: E402

_METRIC_LABELS = {"val_bpb": "val bits/byte", "bpb": "bits/byte", "val_loss": "val loss", "ppl": "perplexity"}


def _latency_label(df: pd.DataFrame) -> str:
    sources = sorted({str(s) for s in df["latency_source"].dropna()})
    kind = "measured" if sources and all(s.startswith("measured") for s in sources) else "predicted"
    suffix = f" [{', '.join(sources)}]" if sources else ""
    return f"{kind} decode latency (s){suffix}"


def _quality_label(df: pd.DataFrame) -> str:
    metric = None
    for col in ("metrics.quality_metric", "metrics.metric"):  # the name the quality proxy reports, if any
        if col in df.columns:
            names = df[col].dropna().unique()
            metric = str(names[0]) if len(names) == 1 else None
            break
    return f"proxy loss ({_METRIC_LABELS.get(metric or 'val_bpb', metric)})"


def _target(study: optuna.Study, target_latency: float | None) -> float | None:
    if target_latency is not None:
        return float(target_latency)
    t = study.user_attrs.get("target_latency")
    return None if t is None else float(t)


def plot_png(df: pd.DataFrame, path: str | os.PathLike, target_latency: float | None = None,
             title: str | None = None) -> Path:
    done = df[df["state"] == "COMPLETE"]
    front = pareto_front(df)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        if done.empty:
            ax.text(0.5, 0.5, "no complete trials yet", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.scatter(done["latency"], done["quality"], s=14, color="0.6", alpha=0.7, label="trials", zorder=2)
            ax.step(front["latency"], front["quality"], where="post", color="tab:red", lw=1.5, zorder=3,
                    label="Pareto front")
            ax.scatter(front["latency"], front["quality"], s=28, color="tab:red", zorder=4)
            # Different genomes can land on the same point: one label per point, listing their trials.
            for (lat, q), grp in front.groupby(["latency", "quality"], sort=False):
                nums = [f"#{n}" for n in grp["number"]]
                label = ", ".join(nums[:3]) + (f" +{len(nums) - 3}" if len(nums) > 3 else "")
                ax.annotate(label, (lat, q), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color="tab:red")
        if target_latency is not None:
            ax.axvline(target_latency, color="tab:blue", ls="--", lw=1, label=f"target {target_latency:g} s")
        ax.set_xlabel(_latency_label(df))
        ax.set_ylabel(_quality_label(df))
        n_failed = int((df["state"] == "FAIL").sum())
        ax.set_title(title or f"{len(done)} complete trials, {len(front)} on the front, {n_failed} failed",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        if not done.empty or target_latency is not None:
            ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def _hover(r: pd.Series) -> str:
    try:
        params = json.loads(r["params"]) if isinstance(r["params"], str) else {}
    except ValueError:
        params = {}
    lines = [f"trial #{r['number']}", f"loss {r['quality']:.4f}", f"latency {r['latency']:.3f} s",
             f"layers: {r['summary']}", f"d_model {r['d_model']}"]
    lines += [f"{k} = {v}" for k, v in params.items()]
    return "<br>".join(str(x) for x in lines)


def plot_html(df: pd.DataFrame, path: str | os.PathLike, target_latency: float | None = None) -> Path:
    import plotly.graph_objects as go

    done = df[df["state"] == "COMPLETE"]
    front = pareto_front(df)
    on_front = set(front["number"])
    rest = done[~done["number"].isin(on_front)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=rest["latency"], y=rest["quality"], mode="markers", name="trials",
                             marker=dict(color="rgba(120,120,120,0.6)", size=7),
                             text=[_hover(r) for _, r in rest.iterrows()], hovertemplate="%{text}<extra></extra>"))
    fig.add_trace(go.Scatter(x=front["latency"], y=front["quality"], mode="lines+markers", name="Pareto front",
                             line=dict(color="crimson", shape="hv"), marker=dict(color="crimson", size=9),
                             text=[_hover(r) for _, r in front.iterrows()], hovertemplate="%{text}<extra></extra>"))
    if target_latency is not None:
        fig.add_vline(x=target_latency, line=dict(color="royalblue", dash="dash"),
                      annotation_text=f"target {target_latency:g} s")
    fig.update_layout(xaxis_title=_latency_label(df), yaxis_title=_quality_label(df), template="plotly_white",
                      title=f"{len(done)} complete trials, {len(front)} on the Pareto front")
    # include_plotlyjs=True embeds plotly.js: the file opens offline, no CDN needed.
    write_text_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return Path(path)


def write_report(study: optuna.Study, out_dir: str | os.PathLike, *,
                 target_latency: float | None = None) -> dict[str, Path]:
    """Write trials.parquet, pareto.png and pareto.html into out_dir; returns their paths by kind.

    target_latency defaults to the study user attribute "target_latency" when set.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study)
    target = _target(study, target_latency)
    return {
        "trials": write_trials(df, out / "trials.parquet"),
        "png": plot_png(df, out / "pareto.png", target),
        "html": plot_html(df, out / "pareto.html", target),
    }


__all__ = ["write_report", "plot_png", "plot_html"]
