"""Multi-fidelity vs single-fidelity search at equal CPU time, on the surrogate objective.

Single fidelity trains every candidate at the top rung (294,912 tokens, the demo's validated proxy budget).
Multi-fidelity screens every candidate at 32,768 tokens and promotes the best third of each rung (search/rungs.py,
the driver's own rule: Pareto layer then crowding, fixed quota per rung) to 98,304 and then 294,912 tokens,
continuing from the rung checkpoint. Both publish only top-rung results, and both are run with the real samplers
(aging evolution with its equal-rung tournaments; NSGA-II through ScreeningOnly) on an Optuna study, W workers in
flight, completions in order of a simulated clock (each evaluation takes its training cost).

The objective, refit to the fidelity data:
- true loss f(g): the searcher benchmark's ridge surrogate of real short-train evaluations (experiments/lib/surrogate.py);
  latency: the roofline H100 prediction (exact and free).
- what a rung observes: f(g) + e_k(g). The error is a fixed function of (genome, rung, proxy seed) - ShortTrain is
  deterministic for a genome, so re-evaluating does not average it away - with a part shared across the rungs of
  a genome (`shared`, continued trainings share a trajectory) and a part per rung. Its size per rung is set so
  that the rung ranks genomes against the truth with a measured Spearman: corr(f + e_k, f) = rho_k, i.e.
  sd(e_k) = sd(f) sqrt(1/rho_k^2 - 1). Each rung's rho is its measured agreement (seed 0, ladder_fidelity's
  CSV) with experiments/proxy_fidelity's reference, 16x the screening rung with another seed.
- cost of an evaluation, in top-rung trainings: (steps it trains) / (top-rung steps) + a fixed share for building
  and validating the model (`overhead`, measured ~0.03: ~5 s of ~170 s). A promotion trains from its rung
  checkpoint (end of the previous rung's stable phase, 80% of its steps) to the end of its rung.

Metric: normalized hypervolume of the TRUE (loss, latency) of the published front (the observed top-rung front),
as a function of CPU spent; one reference point for all runs. Reported: hypervolume at single fidelity's full
budget, and the CPU multi-fidelity needs to reach single fidelity's final hypervolume (paired per seed).

    python -m experiments run fidelity_benchmark          # 10 seeds of 100 evaluations, ~2 min
"""

from __future__ import annotations

import hashlib
import heapq
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from flashsearch.pareto import hypervolume
from flashsearch.search import AgingEvolutionSampler, attrs
from flashsearch.search.rungs import Ladder, ScreeningOnly, enqueue_promotions, rung_of

from experiments.lib.output import header, plot_band, pyplot, save_figure, write_text
from experiments.lib.surrogate import (SPACE, FittedSurrogate, RidgeSurrogate, ask_genome, choose_alpha, design,
                                       load_evaluations, observed_front, wilcoxon_line)

optuna.logging.set_verbosity(optuna.logging.WARNING)

LADDER = Ladder((32768, 98304, 294912), eta=3)
TOKENS_PER_STEP = 512
DECAY_FRACTION = 0.2                      # ShortTrain's default: a rung's checkpoint is at 80% of its steps
REFERENCE_SEED = 2  # proxy_fidelity's reference seed (its CSV also holds a second seed's noise-ceiling rows)


def reference_rho(ladder_csv: str, reference_csv: str) -> list[float]:
    """Spearman of each rung (seed 0, ladder_fidelity's CSV) against proxy_fidelity's 16x reference."""
    from scipy.stats import spearmanr

    ref = pd.read_csv(reference_csv)
    # seed 2 only: the CSV also holds the second-seed references of proxy_fidelity's noise ceiling
    ref = ref[ref["error"].isna() & (ref["seed"] == REFERENCE_SEED)].set_index("genome_id")["loss"]
    d = pd.read_csv(ladder_csv)
    d = d[d["seed"] == 0].drop_duplicates("genome_id").set_index("genome_id").join(ref.rename("ref"), how="inner")
    return [float(spearmanr(d[f"loss{k}"], d["ref"]).statistic) for k in range(LADDER.top + 1)]


def gauss(*key: object) -> float:
    """A standard normal fixed by `key` (Box-Muller on two hash-derived uniforms)."""
    h = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    u1 = (int.from_bytes(h[:8], "big") + 1) / (2**64 + 1)
    u2 = int.from_bytes(h[8:16], "big") / 2**64
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2 * math.pi * u2)


class RungObjective:
    def __init__(self, surrogate: FittedSurrogate, sd_f: float, rhos: list[float], shared: float,
                 overhead: float) -> None:
        self.s, self.sd = surrogate, [sd_f * math.sqrt(1.0 / r**2 - 1.0) for r in rhos]
        self.shared, self.overhead = shared, overhead
        steps = [t // TOKENS_PER_STEP for t in LADDER.tokens]
        resume = [0] + [s - max(1, round(DECAY_FRACTION * s)) for s in steps[:-1]]
        self.cost = [(steps[k] - resume[k]) / steps[-1] + overhead for k in range(len(steps))]

    def observe(self, g, rung: int, seed: int) -> tuple[float, float, float]:
        """(true loss, observed loss at `rung`, latency)."""
        z = math.sqrt(self.shared) * gauss(seed, g.id) + math.sqrt(1 - self.shared) * gauss(seed, g.id, rung)
        true = self.s.loss(g)
        return true, true + self.sd[rung] * z, self.s.latency(g)


def make_sampler(name: str, seed: int, multi: bool, args):
    if name == "aging":
        return AgingEvolutionSampler(SPACE, population=args.population, sample_size=args.sample_size, seed=seed)
    inner = optuna.samplers.NSGAIISampler(population_size=args.population, seed=seed)
    return ScreeningOnly(inner) if multi else inner


def run_one(name: str, multi: bool, seed: int, budget: float, obj: RungObjective, args) -> pd.DataFrame:
    """One search until `budget` top-rung trainings of CPU are spent (trials in flight then finish). Rows: one per
    completed evaluation in clock order: cpu (cumulative), rung, candidate, true, observed, latency, top."""
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(name, seed, multi, args))
    dists = SPACE.distributions()
    top = LADDER.top if multi else 0
    known: dict[str, list[float]] = {}
    busy: list[tuple[float, int, object, object, int]] = []   # (finish clock, tiebreak, trial, genome, rung)
    clock, spent, started, rows, n = 0.0, 0.0, 0.0, [], 0
    while True:
        while len(busy) < args.workers and started < budget:
            trial, genome = ask_genome(study, dists)
            rung = rung_of(trial) if multi else 0
            if multi and attrs.RUNG not in trial.user_attrs:
                trial.set_user_attr(attrs.RUNG, 0)
                trial.set_user_attr(attrs.TOP_RUNG, top)
            if rung == 0 and genome.id in known:     # the driver's cached replay: free, not a candidate
                trial.set_user_attr(attrs.CACHED_FROM, -1)
                study.tell(trial, known[genome.id])
                continue
            k = rung
            cost = obj.cost[k] if multi else 1.0 + obj.overhead
            started += cost
            n += 1
            heapq.heappush(busy, (clock + cost, n, trial, genome, rung))
        if not busy:
            break
        clock, _, trial, genome, rung = heapq.heappop(busy)
        cost = obj.cost[rung] if multi else 1.0 + obj.overhead
        true, observed, latency = obj.observe(genome, rung if multi else LADDER.top, seed)
        if rung == 0:
            known[genome.id] = [observed, latency]
        study.tell(trial, [observed, latency])
        spent += cost
        rows.append({"cpu": spent, "rung": rung, "candidate": trial.user_attrs.get(attrs.CANDIDATE, trial.number),
                     "true": true, "observed": observed, "latency": latency, "top": rung == top})
        if multi:
            enqueue_promotions(study, LADDER)
    return pd.DataFrame(rows)


def hv_curve(df: pd.DataFrame, grid: np.ndarray, ref: tuple[float, float], lo: np.ndarray) -> np.ndarray:
    """Normalized true hypervolume of the published front after each grid CPU value."""
    box = (ref[0] - lo[0]) * (ref[1] - lo[1])
    out = np.zeros(len(grid))
    pub = df[df["top"]].sort_values("cpu")
    pts = pub[["true", "observed", "latency"]].to_numpy()
    cpus = pub["cpu"].to_numpy()
    for i, c in enumerate(grid):
        m = int(np.searchsorted(cpus, c, side="right"))
        if m:
            front = observed_front(pts[:m])
            out[i] = hypervolume(front[:, [0, 2]], ref) / box
    return out


@dataclass(frozen=True)
class Settings:
    evaluations: int             # single fidelity's evaluations = the CPU budget
    seeds: int
    samplers: tuple[str, ...]    # aging and/or nsga2
    workers: int                 # trials in flight
    population: int              # aging P, NSGA-II population
    sample_size: int             # aging S (tournament)
    shared: float                # share of a genome's rung error common to its rungs
    overhead: float              # per-evaluation cost in top-rung trainings (build + validation)
    data: str                    # collected evaluations the surrogate is fitted to
    ladder_csv: str              # ladder_fidelity's trainings (each rung's loss, seed 0)
    reference_csv: str           # proxy_fidelity's 16x references
    out: str                     # folder for the markdown, figure and CSV


def main(args: Settings, meta: dict) -> None:
    t0 = time.perf_counter()
    load = os.getloadavg()

    df = load_evaluations(args.data)
    X, y = design(df)
    surrogate = FittedSurrogate(RidgeSurrogate(choose_alpha(X, y)).fit(X, y))
    draws = [SPACE.decode(SPACE.repair(SPACE.sample(random.Random(f"draw/{i}")))) for i in range(500)]
    sd_f = float(np.std([surrogate.loss(g) for g in draws]))
    rhos = reference_rho(args.ladder_csv, args.reference_csv)
    source = (f"every rung (seed 0, {Path(args.ladder_csv).name}) against {Path(args.reference_csv).name}'s "
              f"reference: 16x the screening rung, proxy seed {REFERENCE_SEED}, wikipedia")
    obj = RungObjective(surrogate, sd_f, rhos, args.shared, args.overhead)
    budget = args.evaluations * (1.0 + args.overhead)
    names = list(args.samplers)

    runs: dict[tuple[str, str, int], pd.DataFrame] = {}
    for seed in range(args.seeds):
        for name in names:
            for mode in ("single", "multi"):
                r = run_one(name, mode == "multi", seed, budget, obj, args)
                runs[(name, mode, seed)] = r
                print(f"{name:6s} {mode:6s} seed {seed}: {len(r)} evaluations, {int(r['top'].sum())} at the top rung,"
                      f" {r['cpu'].max():.1f} CPU", file=sys.stderr, flush=True)
    allp = pd.concat(runs.values())[["true", "latency"]].to_numpy()
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    ref = (float(hi[0] + 0.1 * (hi[0] - lo[0])), float(hi[1] + 0.1 * (hi[1] - lo[1])))
    grid = np.linspace(budget / 50, budget, 50)
    curves = {key: hv_curve(r, grid, ref, lo) for key, r in runs.items()}

    rows = []
    for (name, mode, seed), c in curves.items():
        for x, v in zip(grid, c):
            rows.append({"sampler": name, "fidelity": mode, "seed": seed, "cpu": x, "hypervolume": v})
    res = pd.DataFrame(rows)
    out = Path(args.out) / "fidelity_benchmark.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    res.to_csv(out.with_suffix(".csv"), index=False)

    cost_s = 170.0   # CPU-s of one top-rung training on one core (proxy_speed's results, fast path)
    lines = [header("Multi-fidelity vs single-fidelity search at equal CPU time (surrogate objective)",
                    meta).rstrip("\n"),
             f"- wall {time.perf_counter() - t0:.0f} s (load {load[0]:.1f} at start); optuna {optuna.__version__}.",
             "",
             f"Ladder {list(LADDER.tokens)} tokens, eta {LADDER.eta}; single fidelity trains every candidate at "
             f"{LADDER.tokens[-1]}. CPU budget = {args.evaluations} single-fidelity evaluations "
             f"({budget:.1f} top-rung trainings incl. overhead {args.overhead}); cost per evaluation in top-rung "
             f"trainings: " + ", ".join(f"rung {k} {c:.3f}" for k, c in enumerate(obj.cost)) + ". "
             f"W = {args.workers} workers; aging P={args.population}, S={args.sample_size}; NSGA-II population "
             f"{args.population}; {args.seeds} seeds (each: its own proxy errors and sampler stream, shared by both "
             "fidelities).", "",
             f"Objective: true loss = ridge surrogate (sd over 500 uniform draws {sd_f:.4f} bpb), roofline latency; "
             f"rung errors sized to the measured fidelity (Spearman vs the reference) "
             + ", ".join(f"rung {k} ({t} tokens) {r:.3f}" for k, (t, r) in enumerate(zip(LADDER.tokens, rhos)))
             + f" ({source}); {args.shared:.0%} of a genome's error "
             "shared across its rungs. The error model (Gaussian, fixed per genome and rung, that share, correlations "
             "chained through the top rung) is an assumption; the rhos are measurements.", "",
             f"Hypervolume: true values of the published (top-rung) observed front, reference ({ref[0]:.4f}, "
             f"{ref[1]:.3f} s), normalized by the box from ({lo[0]:.4f}, {lo[1]:.3f}).", "",
             "| sampler | fidelity | HV @ 1/4 budget | HV @ 1/2 budget | HV @ full budget | candidates screened | "
             "at top rung |", "|---|---|---|---|---|---|---|"]
    for name in names:
        for mode in ("single", "multi"):
            at = {q: [curves[(name, mode, s)][int(round(q * len(grid))) - 1] for s in range(args.seeds)]
                  for q in (0.25, 0.5, 1.0)}
            scr = np.mean([int((runs[(name, mode, s)]["rung"] == 0).sum()) for s in range(args.seeds)])
            topn = np.mean([int(runs[(name, mode, s)]["top"].sum()) for s in range(args.seeds)])
            lines.append(f"| {name} | {mode} | " + " | ".join(f"{np.mean(v):.4f} +- {np.std(v):.4f}"
                                                           for v in at.values()) + f" | {scr:.0f} | {topn:.0f} |")
    lines += ["", "CPU for multi-fidelity to reach single fidelity's final hypervolume (per seed; 'never' = not "
              "within the budget):", ""]
    summary = {}
    for name in names:
        ratios = []
        for s in range(args.seeds):
            target = curves[(name, "single", s)][-1]
            mc = curves[(name, "multi", s)]
            hit = np.nonzero(mc >= target)[0]
            ratios.append(grid[hit[0]] / budget if len(hit) else math.inf)
        finite = [r for r in ratios if math.isfinite(r)]
        med = float(np.median(ratios))
        summary[name] = med
        a = np.array([curves[(name, "multi", s)][-1] for s in range(args.seeds)])
        b = np.array([curves[(name, "single", s)][-1] for s in range(args.seeds)])
        lines.append(f"- {name}: median {med:.2f} of the budget (~{med * budget * cost_s / 60:.0f} CPU-min at "
                     f"{cost_s:.0f} CPU-s per top-rung training); per seed " + ", ".join(
                         "never" if not math.isfinite(r) else f"{r:.2f}" for r in ratios)
                     + f"; reached in {len(finite)}/{args.seeds} seeds. Final HV multi vs single: "
                     + wilcoxon_line(a, b, lower_is_better=False))
    goal = all(v <= 0.5 for v in summary.values())
    lines += ["", f"**Goal (multi-fidelity reaches single fidelity's final hypervolume in <= 1/2 of the CPU): "
              f"{'reached' if goal else 'NOT reached'}** for " + ", ".join(
                  f"{n} ({v:.2f})" for n, v in summary.items()) + "."]

    plt = pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], names):
        for mode, color in (("single", "tab:gray"), ("multi", "tab:red")):
            plot_band(ax, grid / budget, [curves[(name, mode, s)] for s in range(args.seeds)], color,
                      f"{mode} fidelity")
        ax.set_xlabel("CPU spent (fraction of single fidelity's budget)")
        ax.set_ylabel("normalized true hypervolume of the published front")
        ax.set_title(f"{name}, W={args.workers}, {args.seeds} seeds (mean +- std)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out.with_suffix(".png"))
    lines += ["", f"Plot: {out.with_suffix('.png').name}; curves of every run: {out.with_suffix('.csv').name}."]
    print(write_text(out, "\n".join(lines) + "\n").read_text())

