"""Multi-fidelity vs single-fidelity search at equal CPU time, on the surrogate objective.

Single fidelity trains every candidate at the top rung (294,912 tokens, the demo's validated proxy budget).
Multi-fidelity screens every candidate at 32,768 tokens and promotes the best third of each rung (search/rungs.py,
the driver's own rule: Pareto layer then crowding, fixed quota per rung) to 98,304 and then 294,912 tokens,
continuing from the rung checkpoint. Both publish only top-rung results, and both are run with the real samplers
(aging evolution with its equal-rung tournaments; NSGA-II through ScreeningOnly) on an Optuna study, W workers in
flight, completions in order of a simulated clock (each evaluation takes its training cost).

The objective, refit to the fidelity data:
- true loss f(g): the searcher benchmark's ridge surrogate of real short-train evaluations (searcher_benchmark.py);
  latency: the roofline H100 prediction (exact and free).
- what a rung observes: f(g) + e_k(g). The error is a fixed function of (genome, rung, proxy seed) - ShortTrain is
  deterministic for a genome, so re-evaluating does not average it away - with a part shared across the rungs of
  a genome (`--shared`, continued trainings share a trajectory) and a part per rung. Its size per rung is set so
  that the rung ranks genomes against the truth with a measured Spearman: corr(f + e_k, f) = rho_k, i.e.
  sd(e_k) = sd(f) sqrt(1/rho_k^2 - 1). By default (`--fidelity-data reference`) each rung's rho is its measured
  agreement with experiments/proxy_fidelity.py's reference, 16x the screening rung with another seed (0.44, 0.39,
  0.63). `--fidelity-data ladder` chains each rung's same-seed agreement with the top rung (ladder_fidelity.csv)
  with the top rung's 0.94 against 8x training on pydoc, which flatters the rungs; `--fidelity-data pydoc` takes
  the first study's token ladder (~0.58 at 24k-49k tokens, 0.64 at 98k).
- cost of an evaluation, in top-rung trainings: (steps it trains) / (top-rung steps) + a fixed share for building
  and validating the model (`--overhead`, measured ~0.03: ~5 s of ~170 s). A promotion trains from its rung
  checkpoint (end of the previous rung's stable phase, 80% of its steps) to the end of its rung.

Metric: normalized hypervolume of the TRUE (loss, latency) of the published front (the observed top-rung front),
as a function of CPU spent; one reference point for all runs. Reported: hypervolume at single fidelity's full
budget, and the CPU multi-fidelity needs to reach single fidelity's final hypervolume (paired per seed).

    python experiments/fidelity_benchmark.py --evaluations 100 --seeds 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import heapq
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from searcher_benchmark import (SPACE, FittedSurrogate, RidgeSurrogate, ask_genome, choose_alpha,  # noqa: E402
                                design, load_evaluations, observed_front, wilcoxon_line)

from flashsearch.archive import hypervolume, write_text_atomic  # noqa: E402
from flashsearch.search import AgingEvolutionSampler  # noqa: E402
from flashsearch.search.rungs import (CANDIDATE_ATTR, RUNG_ATTR, TOP_ATTR, Ladder, ScreeningOnly,  # noqa: E402
                                      enqueue_promotions, rung_of)
from flashsearch.studies.output import pyplot, save_figure  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

LADDER = Ladder((32768, 98304, 294912), eta=3)
TOKENS_PER_STEP = 512
DECAY_FRACTION = 0.2                      # ShortTrain's default: a rung's checkpoint is at 80% of its steps
# The first proxy-fidelity study (pydoc corpus, 20 genomes, a reference 8x its 49k default, seed 0 throughout).
FIDELITY_CSV = Path(__file__).parent / "results" / "proxy_fidelity_pydoc.csv"
# experiments/proxy_fidelity.py's references: 16x the screening rung, another seed (wikipedia, 30 genomes).
REFERENCE_CSV = Path(__file__).parent / "results" / "proxy_fidelity.csv"
REFERENCE_SEED = 2


def measured_rho() -> dict[int, float]:
    """Spearman vs the 8x reference per token budget (seed 0, d/16), from the first (pydoc) proxy-fidelity study."""
    from scipy.stats import spearmanr

    d = pd.read_csv(FIDELITY_CSV)
    d = d[d["key"].str.contains("-w16-") & (d["seed"] == 0) & d["error"].isna()]
    p = d.pivot_table(index="genome_id", columns="tokens", values="loss")
    ref = p[p.columns.max()]
    return {int(t): float(spearmanr(p[t], ref).statistic) for t in p.columns if t != p.columns.max()}


LADDER_CSV = Path(__file__).parent / "results" / "ladder_fidelity.csv"


def ladder_rho() -> list[float]:
    """Spearman of each lower rung against the top rung, from experiments/ladder_fidelity.py's trainings."""
    from scipy.stats import spearmanr

    d = pd.read_csv(LADDER_CSV)
    d = d[d["seed"] == 0].drop_duplicates("genome_id") if "seed" in d else d.drop_duplicates("genome_id")
    return [float(spearmanr(d[f"loss{k}"], d[f"loss{LADDER.top}"]).statistic) for k in range(LADDER.top)]


def reference_rho() -> list[float]:
    """Spearman of each rung (seed 0, ladder_fidelity.csv) against proxy_fidelity.py's 16x reference."""
    from scipy.stats import spearmanr

    ref = pd.read_csv(REFERENCE_CSV)
    # seed 2 only: the CSV also holds the second-seed references of proxy_fidelity.py's noise ceiling
    ref = ref[ref["error"].isna() & (ref["seed"] == REFERENCE_SEED)].set_index("genome_id")["loss"]
    d = pd.read_csv(LADDER_CSV)
    d = d[d["seed"] == 0].drop_duplicates("genome_id").set_index("genome_id").join(ref.rename("ref"), how="inner")
    return [float(spearmanr(d[f"loss{k}"], d["ref"]).statistic) for k in range(LADDER.top + 1)]


def rung_rho(rho: dict[int, float], tokens: int) -> float:
    """Fidelity at `tokens`, interpolated in log tokens between measured budgets."""
    xs = sorted(rho)
    if tokens <= xs[0]:
        return rho[xs[0]]
    for a, b in zip(xs, xs[1:]):
        if a <= tokens <= b:
            w = (math.log(tokens) - math.log(a)) / (math.log(b) - math.log(a))
            return rho[a] + w * (rho[b] - rho[a])
    return rho[xs[-1]]


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
            if multi and RUNG_ATTR not in trial.user_attrs:
                trial.set_user_attr(RUNG_ATTR, 0)
                trial.set_user_attr(TOP_ATTR, top)
            if rung == 0 and genome.id in known:     # the driver's cached replay: free, not a candidate
                trial.set_user_attr("cached_from", -1)
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
        rows.append({"cpu": spent, "rung": rung, "candidate": trial.user_attrs.get(CANDIDATE_ATTR, trial.number),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluations", type=int, default=100, help="single fidelity's evaluations = the CPU budget")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--samplers", default="aging,nsga2")
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--sample-size", type=int, default=5)
    ap.add_argument("--shared", type=float, default=0.5, help="share of a genome's rung error common to its rungs")
    ap.add_argument("--overhead", type=float, default=0.03, help="per-evaluation cost (build + validation)")
    ap.add_argument("--fidelity-data", choices=("reference", "ladder", "pydoc"), default="reference",
                    help="where the rung fidelities come from: reference = every rung against proxy_fidelity.py's "
                         "16x reference (another seed); ladder = each rung vs the top rung (same seed, "
                         "ladder_fidelity.csv) chained with the top rung's 0.94 vs 8x training on pydoc; pydoc = "
                         "the first proxy-fidelity study's token ladder")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fidelity_benchmark.md"))
    args = ap.parse_args()
    t0, started = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
    load = os.getloadavg()

    df = load_evaluations()
    X, y = design(df)
    surrogate = FittedSurrogate(RidgeSurrogate(choose_alpha(X, y)).fit(X, y))
    import random

    draws = [SPACE.decode(SPACE.repair(SPACE.sample(random.Random(f"draw/{i}")))) for i in range(500)]
    sd_f = float(np.std([surrogate.loss(g) for g in draws]))
    rho_data = measured_rho()
    rho_top = rho_data[max(rho_data)]   # the top rung's budget (295k) against 8x-longer training
    if args.fidelity_data == "reference":
        rhos = reference_rho()
        source = (f"every rung (seed 0, {LADDER_CSV.name}) against {REFERENCE_CSV.name}'s reference: 16x the "
                  "screening rung, proxy seed 2, wikipedia")
    elif args.fidelity_data == "ladder":
        # rung k vs the top rung, measured on this ladder (wikipedia, WSD, continued from checkpoints), chained
        # with the top rung's own fidelity: corr(rung k, truth) ~ corr(rung k, top) x corr(top, truth)
        rhos = [r * rho_top for r in ladder_rho()] + [rho_top]
        source = (f"rungs 0-{LADDER.top - 1} vs the top rung from {LADDER_CSV.name} (wikipedia, this ladder), "
                  f"times the top rung's {rho_top:.3f} vs 8x-longer training from {FIDELITY_CSV.name} (pydoc)")
    else:
        rhos = [rung_rho(rho_data, t) for t in LADDER.tokens[:-1]] + [rho_top]
        source = f"from {FIDELITY_CSV.name}, pydoc corpus, 8x reference, interpolated in log tokens"
    obj = RungObjective(surrogate, sd_f, rhos, args.shared, args.overhead)
    budget = args.evaluations * (1.0 + args.overhead)
    names = [s for s in args.samplers.split(",") if s]

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
    out = Path(args.out)
    res.to_csv(out.with_suffix(".csv"), index=False)

    cost_s = 170.0   # CPU-s of one top-rung training on one core (experiments/results/proxy_speed.md, fast path)
    lines = ["# Multi-fidelity vs single-fidelity search at equal CPU time (surrogate objective)", "",
             f"Command: `python experiments/fidelity_benchmark.py {' '.join(sys.argv[1:])}`  ",
             f"Date: {started:%Y-%m-%d %H:%M} UTC; wall {time.perf_counter() - t0:.0f} s; machine {platform.machine()}, "
             f"{os.cpu_count()} cores (load {load[0]:.1f} at start), Python {platform.python_version()}, "
             f"optuna {optuna.__version__}.", "",
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
            c = np.array([curves[(name, mode, s)] for s in range(args.seeds)])
            ax.plot(grid / budget, c.mean(axis=0), color=color, label=f"{mode} fidelity")
            ax.fill_between(grid / budget, c.mean(axis=0) - c.std(axis=0), c.mean(axis=0) + c.std(axis=0),
                            color=color, alpha=0.15)
        ax.set_xlabel("CPU spent (fraction of single fidelity's budget)")
        ax.set_ylabel("normalized true hypervolume of the published front")
        ax.set_title(f"{name}, W={args.workers}, {args.seeds} seeds (mean +- std)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out.with_suffix(".png"))
    lines += ["", f"Plot: {out.with_suffix('.png').name}; curves of every run: {out.with_suffix('.csv').name}."]
    print(write_text_atomic(out, "\n".join(lines) + "\n").read_text())


if __name__ == "__main__":
    main()
