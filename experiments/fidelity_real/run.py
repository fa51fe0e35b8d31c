"""Multi-fidelity vs single-fidelity search with real short training, at equal CPU time.

Each run is a real `flashsearch run` of search_spaces/hybrid_1b.yaml (aging evolution, Pareto mode, 2 in-process
workers) at a reduced top rung (`tokens`, default 49,152 tokens: a sixth of the demo's, so that 5 seeds of both
fidelities fit in about half an hour on 2 cores): single fidelity trains `sf_trials` candidates at the top rung;
multi-fidelity screens 3x as many with the demo's ladder shape (3 rungs, eta 3: tokens/9, tokens/3, tokens),
spending about the same CPU. Both publish only top-rung results, which come from the same proxy at the same budget,
so their fronts compare directly: the metric is the hypervolume of the observed published front as a function of
the CPU spent (the sum of the trials' evaluation seconds in completion order), one reference point for all runs.

    python -m experiments run fidelity_real      # 5 seeds of both fidelities, ~25 min on 2 cores

The run directories (runs_dir, not committed) are named by a hash of every setting that changes a run (the
overrides, the YAML's text and the proxy's resolved settings), so a rerun resumes only runs made the same way.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flashsearch.pareto import hypervolume
from flashsearch.trials import published, trials_frame

from experiments.lib.cachekey import digest, proxy_fingerprint
from experiments.lib.common import default_proxy
from experiments.lib.output import header, plot_band, pyplot, save_figure, write_text
from experiments.lib.surrogate import wilcoxon_line


@dataclass(frozen=True)
class Settings:
    config: str        # the search's YAML
    seeds: int         # search seeds 0..seeds-1 (the proxy's seed stays the YAML's)
    tokens: int        # top rung (single fidelity's budget)
    sf_trials: int     # single fidelity's trials; multi-fidelity runs 3x as many
    runs_dir: str      # run directories (resumable; not committed)
    out: str           # folder for the markdown, figure and CSV


def run_search(config: str, fidelity: str, seed: int, trials: int, tokens: int, runs_dir: Path) -> pd.DataFrame:
    """One real search; its trials table (cached: an existing run dir made with the same settings is resumed,
    i.e. read back)."""
    from flashsearch.config import load_config
    from flashsearch.runner import STUDY_FILE, run

    overrides = [f"seed={seed}", f"search.fidelity={fidelity}", f"search.trials={trials}",
                 f"budget.tokens={tokens}", "ray.address=local", "search.workers=2", "export_top=1"]
    key = digest(overrides, Path(config).read_text(), proxy_fingerprint(default_proxy(config)[0]))
    out = runs_dir / f"{fidelity}-s{seed}-{key}"
    cfg = load_config(config, [*overrides, f"out_dir={out}"])
    run(cfg, stream=io.StringIO())
    import optuna

    from flashsearch.search.storage import journal_storage

    study = optuna.load_study(study_name=cfg.name, storage=journal_storage(out / STUDY_FILE))
    df = trials_frame(study)
    return df.assign(fidelity=fidelity, seed=seed)


def curve(df: pd.DataFrame, grid: np.ndarray, ref: tuple[float, float]) -> np.ndarray:
    """Hypervolume of the published front after each CPU value of `grid` (CPU = evaluation seconds summed in
    completion order, failed and promoted trials included, cached replays free)."""
    done = df[df["state"].isin(["COMPLETE", "FAIL"]) & df["cached_from"].isna()].sort_values("datetime_complete")
    cpu = done["eval_seconds"].fillna(0).cumsum().to_numpy()
    ok = (done["state"] == "COMPLETE").to_numpy() & published(done).to_numpy()
    pts = done[["quality", "latency"]].to_numpy(dtype=float)
    out = np.zeros(len(grid))
    for i, c in enumerate(grid):
        m = ok & (cpu <= c)
        out[i] = hypervolume(pts[m], ref) if m.any() else 0.0
    return out


def main(args: Settings, meta: dict) -> None:
    t0, load = time.perf_counter(), os.getloadavg()
    out = Path(args.out) / "fidelity_real.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    frames = []
    for seed in range(args.seeds):
        for fidelity, trials in (("single", args.sf_trials), ("multi", 3 * args.sf_trials)):
            t = time.perf_counter()
            df = run_search(args.config, fidelity, seed, trials, args.tokens, Path(args.runs_dir))
            frames.append(df)
            print(f"{fidelity:6s} seed {seed}: {len(df)} trials, {df['eval_seconds'].sum():.0f} CPU-s "
                  f"({time.perf_counter() - t:.0f} s wall)", file=sys.stderr, flush=True)
    allt = pd.concat(frames, ignore_index=True)
    allt.drop(columns=["genome_json", "params", "metrics"]).to_csv(out.with_suffix(".csv"), index=False)

    pub = allt[(allt["state"] == "COMPLETE") & published(allt)]
    lo, hi = pub[["quality", "latency"]].min().to_numpy(), pub[["quality", "latency"]].max().to_numpy()
    ref = (float(hi[0] + 0.1 * (hi[0] - lo[0])), float(hi[1] + 0.1 * (hi[1] - lo[1])))
    box = (ref[0] - lo[0]) * (ref[1] - lo[1])
    sf_cpu = {s: float(allt[(allt["fidelity"] == "single") & (allt["seed"] == s)]["eval_seconds"].sum())
              for s in range(args.seeds)}
    budget = float(np.median(list(sf_cpu.values())))
    grid = np.linspace(budget / 40, 1.2 * budget, 48)
    curves = {(f, s): curve(allt[(allt["fidelity"] == f) & (allt["seed"] == s)], grid, ref) / box
              for f in ("single", "multi") for s in range(args.seeds)}

    lines = [header("Multi-fidelity vs single-fidelity search, real short training, equal CPU", meta).rstrip("\n"),
             f"- wall {time.perf_counter() - t0:.0f} s; shared with other jobs (load {load[0]:.1f} at start).", "",
             f"Each run: `flashsearch run {args.config} seed=S budget.tokens={args.tokens} "
             "ray.address=local search.workers=2` (aging evolution, Pareto mode, the YAML's 4 seed architectures "
             f"first, wikipedia corpus, short_train defaults). Single fidelity: search.trials={args.sf_trials} at "
             f"{args.tokens} tokens. Multi-fidelity: search.trials={3 * args.sf_trials}, ladder "
             f"{[args.tokens // 9, args.tokens // 3, args.tokens]} tokens, eta 3. Seeds 0..{args.seeds - 1} (the "
             "search's seed; the proxy's seed is 0 in every run, so the same genome at the same rung gets the same "
             "loss in both fidelities).", "",
             f"CPU = the trials' evaluation seconds summed in completion order (single fidelity's median total: "
             f"{budget:.0f} CPU-s). Hypervolume of the observed published front (top-rung results), reference "
             f"(loss {ref[0]:.3f}, latency {ref[1]:.2f} s), normalized by the box from ({lo[0]:.3f}, {lo[1]:.2f}).",
             "", "| fidelity | CPU-s per run | candidates | at top rung | HV @ 1/2 SF CPU | HV @ SF CPU |",
             "|---|---|---|---|---|---|"]
    i_half = int(np.argmin(abs(grid - budget / 2)))
    i_full = int(np.argmin(abs(grid - budget)))
    for f in ("single", "multi"):
        sub = allt[allt["fidelity"] == f]
        cpu = sub.groupby("seed")["eval_seconds"].sum()
        cands = sub[(sub["state"] == "COMPLETE") & sub["cached_from"].isna()
                    & (sub["rung"].isna() | (sub["rung"] == 0))].groupby("seed").size()
        top = sub[(sub["state"] == "COMPLETE") & published(sub)].groupby("seed").size()
        hv_half = [curves[(f, s)][i_half] for s in range(args.seeds)]
        hv_full = [curves[(f, s)][i_full] for s in range(args.seeds)]
        lines.append(f"| {f} | {cpu.mean():.0f} +- {cpu.std():.0f} | {cands.mean():.1f} | {top.mean():.1f} | "
                     f"{np.mean(hv_half):.3f} +- {np.std(hv_half):.3f} | {np.mean(hv_full):.3f} +- "
                     f"{np.std(hv_full):.3f} |")
    ratios = []
    for s in range(args.seeds):
        target = curves[("single", s)][i_full]
        hit = np.nonzero(curves[("multi", s)] >= target)[0]
        ratios.append(grid[hit[0]] / budget if len(hit) else math.inf)
    a = np.array([curves[("multi", s)][i_full] for s in range(args.seeds)])
    b = np.array([curves[("single", s)][i_full] for s in range(args.seeds)])
    med = float(np.median(ratios))
    lines += ["", "CPU for multi-fidelity to reach single fidelity's final hypervolume, as a fraction of single "
              "fidelity's CPU, per seed: " + ", ".join("never" if not math.isfinite(r) else f"{r:.2f}"
                                                     for r in ratios) + f" (median {med:.2f}).",
              f"Hypervolume at single fidelity's CPU, multi vs single: {wilcoxon_line(a, b, lower_is_better=False)}.",
              "", f"**Goal (<= 1/2 of the CPU): {'reached' if med <= 0.5 else 'NOT reached'}** (median {med:.2f})."]

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    for f, color in (("single", "tab:gray"), ("multi", "tab:red")):
        plot_band(ax, grid, [curves[(f, s)] for s in range(args.seeds)], color, f"{f} fidelity")
    ax.axvline(budget, color="k", ls=":", lw=1)
    ax.set_xlabel("CPU seconds spent on evaluations")
    ax.set_ylabel("normalized hypervolume of the published front")
    ax.set_title(f"real short training, top rung {args.tokens} tokens, {args.seeds} seeds (mean +- std)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out.with_suffix(".png"))
    lines += ["", f"Plot: {out.with_suffix('.png').name}; every trial of every run: {out.with_suffix('.csv').name}."]
    print(write_text(out, "\n".join(lines) + "\n").read_text())

