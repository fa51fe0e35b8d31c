"""Report of a search, rebuilt from the study alone:

    write_report(study, out_dir)  ->  out_dir/trials.parquet    one row per trial
                                      out_dir/pareto.png        Pareto plot (static)
                                      out_dir/pareto.html       Pareto plot (interactive, offline)
                                      out_dir/hypervolume.png   hypervolume of the front after each evaluation
                                      out_dir/hypervolume.csv   the same numbers
                                      out_dir/ranking.md        complete trials ranked (non-dominated sorting)

The Pareto plots also show the reference models the run stored in the study (flashsearch/references.py).

Every file is written atomically (temp file + rename), so a report is either the old one or the new one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

import numpy as np  # noqa: E402

from flashsearch.atomic import atomic_path, write_text_atomic  # noqa: E402
from flashsearch.pareto import hypervolume, pareto_front, pareto_mask  # noqa: E402
from flashsearch.trials import complete_trials, published, trials_frame, write_trials  # noqa: E402

from flashsearch.references import references_of  # noqa: E402

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


def _save_png(fig: Any, path: str | os.PathLike) -> None:
    """Lay out and write a figure atomically (a reader never sees half a PNG)."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def reference_marks(df: pd.DataFrame, references: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Where each reference model goes on the Pareto plot: {name, latency, loss}. loss is that of the earliest
    complete trial of the same genome when the search evaluated it (e.g. as a seed), else None (then the plot
    draws a vertical line at its predicted latency)."""
    ok = complete_trials(df, one_per_genome=True)
    by_id = {gid: r for gid, r in zip(ok["genome_id"], ok.itertuples(index=False)) if gid is not None}
    marks = []
    for ref in references:
        hit = by_id.get(ref.get("genome_id"))
        if hit is not None:
            marks.append({"name": str(ref["name"]), "latency": float(hit.latency), "loss": float(hit.quality),
                          "trial": int(hit.number)})
        else:
            marks.append({"name": str(ref["name"]), "latency": float(ref["latency"]), "loss": None, "trial": None})
    return marks


def plot_png(df: pd.DataFrame, path: str | os.PathLike, target_latency: float | None = None,
             title: str | None = None, references: Sequence[Mapping[str, Any]] = ()) -> Path:
    done = df[df["state"] == "COMPLETE"]
    front = pareto_front(df)
    fig, ax = plt.subplots(figsize=(9.5, 5.5), dpi=120)
    try:
        if done.empty:
            ax.text(0.5, 0.5, "no complete trials yet", ha="center", va="center", transform=ax.transAxes)
        elif _multi_fidelity(df):
            # One colour and size per rung: the front is made of the top rung's results only.
            top = int(df["top_rung"].dropna().max())
            colors = plt.get_cmap("viridis")
            for k in range(top + 1):
                at_k = done[done["rung"] == k]
                if not at_k.empty:
                    ax.scatter(at_k["latency"], at_k["quality"], s=10 + 14 * k, alpha=0.75, zorder=2,
                               color=colors(0.85 * k / max(1, top)),
                               label=f"rung {k}" + (" (top: the front)" if k == top else "") + f": {len(at_k)}")
        else:
            ax.scatter(done["latency"], done["quality"], s=14, color="0.6", alpha=0.7, label="trials", zorder=2)
        if not done.empty:
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
        marks = reference_marks(df, references)
        for m in marks:
            if m["loss"] is not None:  # evaluated in this search: mark its point
                ax.scatter([m["latency"]], [m["loss"]], marker="*", s=140, color="tab:green", edgecolor="black",
                           linewidths=0.5, zorder=5)
                ax.annotate(f"{m['name']} (#{m['trial']})", (m["latency"], m["loss"]), textcoords="offset points",
                            xytext=(6, -10), fontsize=8, color="tab:green")
            else:  # not trained here: only its predicted latency is known
                ax.axvline(m["latency"], color="tab:green", ls=":", lw=1, zorder=1)
                ax.annotate(m["name"], (m["latency"], 0.98), xycoords=("data", "axes fraction"), rotation=90,
                            ha="right", va="top", fontsize=8, color="tab:green")
        if marks:
            ax.plot([], [], color="tab:green", ls=":", marker="*", label="reference models (predicted latency)")
        ax.set_xlabel(_latency_label(df))
        ax.set_ylabel(_quality_label(df))
        # Trials stopped with the controller are re-queued, not failures of their candidate: count them apart.
        kinds = df["error_kind"] if "error_kind" in df.columns else ""
        stopped = (df["state"] == "FAIL") & (kinds == "interrupted")
        n_failed, n_stopped = int((df["state"] == "FAIL").sum() - stopped.sum()), int(stopped.sum())
        counts = f"{n_failed} failed" + (f", {n_stopped} interrupted" if n_stopped else "")
        what = f"{len(done)} complete trials, {len(front)} on the front"
        if _multi_fidelity(df):
            what += f" (top-rung results only: {int(published(done).sum())})"
        ax.set_title(title or f"{what}, {counts}", fontsize=10)
        ax.grid(True, alpha=0.3)
        if not done.empty or target_latency is not None or marks:
            # outside the axes: inside, "best" still covered points once the plot filled up
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        _save_png(fig, path)
    finally:
        plt.close(fig)
    return Path(path)


def _multi_fidelity(df: pd.DataFrame) -> bool:
    return "top_rung" in df.columns and bool(df["top_rung"].notna().any())


def _hover(r: pd.Series) -> str:
    try:
        params = json.loads(r["params"]) if isinstance(r["params"], str) else {}
    except ValueError:
        params = {}
    rung = r.get("rung")
    lines = [f"trial #{r['number']}" + ("" if rung is None or pd.isna(rung) else f" (rung {int(rung)})"),
             f"loss {r['quality']:.4f}", f"latency {r['latency']:.3f} s",
             f"layers: {r['summary']}", f"d_model {r['d_model']}"]
    lines += [f"{k} = {v}" for k, v in params.items()]
    return "<br>".join(str(x) for x in lines)


def plot_html(df: pd.DataFrame, path: str | os.PathLike, target_latency: float | None = None,
              references: Sequence[Mapping[str, Any]] = ()) -> Path:
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
    marks = reference_marks(df, references)
    evaluated = [m for m in marks if m["loss"] is not None]
    if evaluated:
        fig.add_trace(go.Scatter(x=[m["latency"] for m in evaluated], y=[m["loss"] for m in evaluated],
                                 mode="markers+text", name="reference models", text=[m["name"] for m in evaluated],
                                 textposition="bottom right", marker=dict(symbol="star", size=14, color="seagreen"),
                                 hovertemplate="%{text}: latency %{x:.3f} s, loss %{y:.4f}<extra></extra>"))
    for m in marks:
        if m["loss"] is None:
            fig.add_vline(x=m["latency"], line=dict(color="seagreen", dash="dot"), annotation_text=m["name"],
                          annotation_textangle=-90, annotation_position="top left")
    fig.update_layout(xaxis_title=_latency_label(df), yaxis_title=_quality_label(df), template="plotly_white",
                      title=f"{len(done)} complete trials, {len(front)} on the Pareto front")
    # include_plotlyjs=True embeds plotly.js: the file opens offline, no CDN needed.
    write_text_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return Path(path)


# ---- hypervolume over evaluations -------------------------------------------------------------------------
def reference_point(df: pd.DataFrame) -> tuple[float, float] | None:
    """(loss, latency) reference for the hypervolume, from the study alone: the worst value of each objective
    among COMPLETE trials plus 10% of its range (so the extreme front points count too). None if no trials."""
    ok = complete_trials(df)
    if ok.empty:
        return None
    ref = []
    for col in ("quality", "latency"):
        lo, hi = float(ok[col].min()), float(ok[col].max())
        ref.append(hi + 0.1 * (hi - lo) if hi > lo else hi + 0.1 * abs(hi) + 1e-12)
    return ref[0], ref[1]


def hypervolume_curve(df: pd.DataFrame, reference: tuple[float, float] | None = None) -> pd.DataFrame:
    """Hypervolume of the (loss, latency) front after each evaluation, in trial-number order.

    An evaluation = a trial a worker ran (COMPLETE or FAIL; promotions too); cached replays of an identical genome
    cost nothing and are not counted. Only published results (the top rung under multi-fidelity) add volume. Columns: evaluations, trial, hypervolume (w.r.t. `reference`, default
    reference_point(df)), normalized (hypervolume / the area of the box ideal..reference).
    """
    ref = reference or reference_point(df)
    rows: list[dict] = []
    if ref is None:
        return pd.DataFrame(columns=["evaluations", "trial", "hypervolume", "normalized"])
    ok = complete_trials(df)
    box = (ref[0] - float(ok["quality"].min())) * (ref[1] - float(ok["latency"].min()))
    evaluated = df[df["state"].isin(["COMPLETE", "FAIL"]) & df["cached_from"].isna()]
    evaluated = evaluated.assign(is_published=published(evaluated)).sort_values("number")
    points: list[tuple[float, float]] = []
    hv = 0.0
    for i, r in enumerate(evaluated.itertuples(index=False), start=1):
        if r.state == "COMPLETE" and r.is_published and math.isfinite(r.quality) and math.isfinite(r.latency):
            points.append((float(r.quality), float(r.latency)))
            hv = hypervolume(points, ref)
        rows.append({"evaluations": i, "trial": int(r.number), "hypervolume": hv,
                     "normalized": hv / box if box > 0 else 0.0})
    return pd.DataFrame(rows)


def plot_hypervolume(curve: pd.DataFrame, path: str | os.PathLike,
                     reference: tuple[float, float] | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        if curve.empty:
            ax.text(0.5, 0.5, "no evaluations yet", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.plot(curve["evaluations"], curve["normalized"], color="tab:red", lw=1.5, drawstyle="steps-post")
            ax.set_ylim(0, max(1e-9, float(curve["normalized"].max())) * 1.05)
        ax.set_xlabel("evaluations (trials run by a worker, failed included)")
        ax.set_ylabel("hypervolume (fraction of the ideal..reference box)")
        ref = "" if reference is None else f"; reference = loss {reference[0]:.4g}, latency {reference[1]:.4g} s"
        ax.set_title(f"Hypervolume of the loss-latency front{ref}", fontsize=9)
        ax.grid(True, alpha=0.3)
        _save_png(fig, path)
    finally:
        plt.close(fig)
    return Path(path)


# ---- ranking -------------------------------------------------------------------------------------------------
def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Front index per point (0 = Pareto front, 1 = front once those are removed, ...), 2-D minimization."""
    ranks = np.full(len(points), -1, dtype=int)
    remaining = np.arange(len(points))
    front = 0
    while len(remaining):
        mask = pareto_mask(points[remaining])
        ranks[remaining[mask]] = front
        remaining = remaining[~mask]
        front += 1
    return ranks


def ranking_table(df: pd.DataFrame, target_latency: float | None = None, top: int = 50) -> pd.DataFrame:
    """COMPLETE trials (one per genome) ranked by non-dominated front, then by loss; under a latency target,
    the trials meeting it come first."""
    ok = complete_trials(df, one_per_genome=True)
    if ok.empty:
        return ok.assign(front=pd.Series(dtype=int), meets_target=pd.Series(dtype=bool))
    ok = ok.assign(front=nondominated_ranks(ok[["quality", "latency"]].to_numpy(dtype=float)),
                   meets_target=(ok["latency"] <= target_latency) if target_latency is not None else True)
    ok = ok.sort_values(["meets_target", "front", "quality", "latency", "number"],
                        ascending=[False, True, True, True, True])
    return ok.head(top).reset_index(drop=True)


def rung_history(df: pd.DataFrame) -> dict[int, str]:
    """Multi-fidelity: each candidate's losses at the rungs it reached, e.g. {7: "3.697 -> 3.246 -> 2.810"}."""
    ok = complete_trials(df, all_rungs=True)
    ok = ok[ok["candidate"].notna() & ok["cached_from"].isna()].sort_values("rung")
    return {int(c): " -> ".join(f"{q:.3f}" for q in grp["quality"]) for c, grp in ok.groupby("candidate")}


def ranking_markdown(df: pd.DataFrame, target_latency: float | None = None, top: int = 50) -> str:
    table = ranking_table(df, target_latency, top)
    n_done = int((df["state"] == "COMPLETE").sum())
    note = ""
    if _multi_fidelity(df):
        n_pub = int(published(df[df["state"] == "COMPLETE"]).sum())
        note = (f" Multi-fidelity: only the {n_pub} results at the top rung are ranked (lower rungs trained "
                "less; see the rung column of trials.parquet).")
    lines = [f"# Ranking ({len(table)} of {n_done} complete trials)", "",
             "Ranked by non-dominated front (1 = Pareto front), then loss"
             + (f"; trials meeting the {target_latency:g} s target first." if target_latency is not None else ".")
             + " Loss = the quality proxy's (lower is better); latency = " + _latency_label(df) + "." + note, ""]
    head = ["rank", "front", "trial", "loss", "latency (s)", "params (B)", "d_model", "layers", "pattern"]
    if target_latency is not None:
        head.append("meets target")
    history = rung_history(df) if _multi_fidelity(df) else None
    if history is not None:
        head.append("loss by rung (screening first)")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, r in enumerate(table.to_dict("records"), start=1):
        params = r.get("metrics.params")
        cells = [rank, int(r["front"]) + 1, f"#{r['number']}", f"{r['quality']:.4f}", f"{r['latency']:.3f}",
                 "-" if params is None or params != params else f"{float(params) / 1e9:.3f}",
                 "-" if pd.isna(r["d_model"]) else int(r["d_model"]),
                 "-" if pd.isna(r["n_layers"]) else int(r["n_layers"]), f"`{r['summary'] or '-'}`"]
        if target_latency is not None:
            cells.append("yes" if r["meets_target"] else "no")
        if history is not None:
            cells.append(history.get(int(r["candidate"]), "-") if not pd.isna(r["candidate"]) else "-")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(study: optuna.Study, out_dir: str | os.PathLike, *,
                 target_latency: float | None = None) -> dict[str, Path]:
    """Write trials.parquet, pareto.png/html, hypervolume.png/csv and ranking.md into out_dir; returns paths by kind.

    target_latency: draw it and rank the trials meeting it first (`flashsearch report` reads it from the
    run's fingerprint).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study)
    target = None if target_latency is None else float(target_latency)
    refs = references_of(study)
    ref = reference_point(df)
    curve = hypervolume_curve(df, ref)
    with atomic_path(out / "hypervolume.csv") as tmp:
        curve.to_csv(tmp, index=False)
    return {
        "trials": write_trials(df, out / "trials.parquet"),
        "png": plot_png(df, out / "pareto.png", target, references=refs),
        "html": plot_html(df, out / "pareto.html", target, references=refs),
        "hypervolume": plot_hypervolume(curve, out / "hypervolume.png", ref),
        "hypervolume_csv": out / "hypervolume.csv",
        "ranking": write_text_atomic(out / "ranking.md", ranking_markdown(df, target)),
    }


__all__ = ["write_report", "plot_png", "plot_html", "plot_hypervolume", "hypervolume_curve", "reference_point",
           "ranking_table", "ranking_markdown", "rung_history", "nondominated_ranks", "reference_marks"]
