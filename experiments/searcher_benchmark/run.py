"""Searcher benchmark: aging evolution vs random search vs NSGA-II vs TPE with W asynchronous workers and noisy
evaluations, in latency-target mode (the paper's Algorithm 1) and in Pareto mode, at equal evaluation budgets.

What aging evolution is for: many workers finishing out of order, and a quality proxy whose value for one
architecture varies from run to run. So every run here keeps W = 10 trials in flight (Optuna ask/tell on the real
samplers; each time, one in-flight trial chosen at random finishes and a new one is asked: asynchronous
completion, simulated without processes), and each evaluation's loss is the objective's loss plus Gaussian noise
re-drawn per evaluation (a replay of an already-evaluated genome returns its recorded result, as the driver does).

Objectives (`objective`), both with flashsearch's roofline latency (analytic H100 decode latency of the
full-size genome, 8192 tokens, batch 1), which is exact and free:

- `surrogate`: loss = a ridge regression on genome features (`genome_features`: operator counts by type, overall
  and per third of the stack, FFN count, width, depth, log parameters; standardized; `RidgeSurrogate`) fitted to
  the real short-train evaluations in experiments/collect_evaluations/results/short_train_evals.csv (its study,
  the NAS-Bench-301 approach). Its cross-validated rank correlation and RMSE are reported in the results.
- `synthetic`: loss = an analytic function of the genome written for this benchmark (`synthetic_loss`) with the
  shape the paper describes; it says nothing about real architectures. Unlike the surrogate it is not linear in
  the screening features of aging's `children_per_ask` option, so it checks that option on a landscape its model
  does not match.

Modes: `target` - search.target_latency = `target` seconds; aging solves every candidate's width (widest meeting
the target, infeasible children skipped); NSGA-II and TPE see the constraint latency - target <= 0 through
Trial.set_constraint (Optuna 5's replacement for constraints_func), as the driver does; random ignores it;
`randomw` (a control) is random search whose every draw is solved to the widest width meeting the target. Metric:
the TRUE (noise-free) loss of the candidate the searcher reports, i.e. the feasible evaluation with the lowest
observed loss. `pareto` - metric: normalized hypervolume of the TRUE (loss, latency) of the evaluations on the
observed front, one reference point for all runs (worst true values seen + 10% of the range).

Paired across seeds: seed s gives every searcher the same noise stream and completion-order stream, and each
sampler its own seed-s start-up stream; Wilcoxon signed-rank tests (scipy) compare each aging variant with the
best baseline per mode.

    python -m experiments run searcher_benchmark budget=200 jobs=2                # searcher_surrogate.*
    python -m experiments run searcher_benchmark objective=synthetic budget=200 jobs=2
    python -m experiments run searcher_benchmark budget=200 jobs=2 modes=[target] \
        samplers=[aging,aging8,randomw,tpe] name=searcher_surrogate_width_control
    python -m experiments run searcher_benchmark --quick

Writes <name>.md (+ .png, + .csv of every run's metric at each checkpoint) to `out`; name defaults to
searcher_<objective>.
"""

from __future__ import annotations

import dataclasses
import os
import hashlib
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.pareto import hypervolume
from flashsearch.search import AgingEvolutionSampler, attrs
from flashsearch.search.latency_target import CONSTRAINT_KEY

from experiments.lib.output import header, pyplot, save_figure, write_text
from experiments.lib.surrogate import (SPACE, FittedSurrogate, Objective, RidgeSurrogate, ask_genome, choose_alpha,
                                       cross_validate, design, feature_names, layer_params, load_evaluations,
                                       observed_front, wilcoxon_line)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Quality per parameter of each token mixer (synthetic; ordered like the paper's same-latency table:
# DeltaNet > Gated DeltaNet > GLA > Mamba2 > SWA, full attention best per layer).
MIXER_QUALITY = {"attention": 1.00, "deltanet": 0.93, "gated_deltanet": 0.91, "gla": 0.88, "mamba2": 0.86,
                 "swa": 0.84}


def synthetic_loss(g: Genome) -> float:
    """SYNTHETIC quality (lower is better); see the module doc. Deterministic in the genome."""
    mixers = [op for op in g.layer_types if op != "ffn"]
    quality = sum(MIXER_QUALITY.get(op, 0.85) * layer_params(op, g) for op in mixers)
    quality += sum(layer_params(op, g) for op in g.layer_types if op == "ffn")
    effective = max(quality, 1.0)
    loss = 1.7 + 9.0 * (effective / 1e6) ** -0.28                              # scaling with effective params
    n_attn = sum(op in ("attention",) for op in mixers)
    loss += 0.10 if n_attn == 0 else -0.02 * min(n_attn, 3)                   # recall needs a little attention
    loss -= 0.04 if len(set(mixers) - {"attention", "swa"}) >= 2 else 0.0     # two linear mixers together help
    ffn_frac = g.count("ffn") / max(1, g.n_layers)
    loss += 0.25 * (ffn_frac - 0.5) ** 2                                        # FFNs help up to ~half the ops
    loss += 0.02 * max(0, len(mixers) - 20) / 10                               # very deep and thin: optimizes worse
    noise = int(hashlib.sha256(g.id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF  # deterministic "proxy noise"
    return float(loss + 0.02 * (noise - 0.5))


class Surrogate(Objective):
    """The synthetic objective: synthetic_loss + roofline latency."""

    name = "synthetic"

    def loss_of(self, g: Genome) -> float:
        return synthetic_loss(g)


# ---- searchers -----------------------------------------------------------------------------------------------
BASELINES = ("random", "randomw", "nsga2", "tpe")


def make_sampler(name: str, seed: int, args, ev: Objective, target: float | None):
    """`aging` = Algorithm 1; `agingK` (e.g. aging8) = aging with children_per_ask=K (surrogate screening)."""
    if name.startswith("aging"):
        k = int(name[5:] or 1)
        return AgingEvolutionSampler(SPACE, population=args.population, sample_size=args.sample_size,
                                     target_latency=target, seed=seed, latency_fn=ev.latency, children_per_ask=k)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "randomw":  # random search that, like aging, solves each draw's width for the target (a control)
        return AgingEvolutionSampler(SPACE, population=10**9, sample_size=1, target_latency=target, seed=seed,
                                     latency_fn=ev.latency)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=args.population, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=args.population)
    raise FlashsearchError(f"unknown sampler {name!r}: use aging, agingK (K children per ask), random, randomw, nsga2 "
                     "or tpe")


def run_one(name: str, mode: str, seed: int, args, ev: Objective) -> np.ndarray:
    """One search with W trials in flight. Returns [n, 3]: (true loss, observed loss, latency) per evaluation
    in completion order (replays of evaluated genomes excluded: they cost nothing)."""
    target = args.target if mode == "target" else None
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=make_sampler(name, seed, args, ev, target))
    dists = SPACE.distributions()
    order = np.random.default_rng([seed, 1])            # which in-flight trial finishes next
    noise = np.random.default_rng([seed, 2])            # evaluation noise, same stream for every searcher
    known: dict[str, list[float]] = {}
    in_flight: list[tuple[optuna.trial.Trial, Genome]] = []
    out: list[tuple[float, float, float]] = []
    asked = 0

    def tell(trial, values):
        if target is not None:
            trial.set_constraint(CONSTRAINT_KEY, values[1] - target)
        study.tell(trial, values)

    while len(out) < args.budget:
        while len(in_flight) < args.workers and len(out) + len(in_flight) < args.budget and asked < 5 * args.budget:
            trial, genome = ask_genome(study, dists)
            asked += 1
            if genome.id in known:  # the driver's cached replay: no evaluation, no new population member
                trial.set_user_attr(attrs.CACHED_FROM, -1)
                tell(trial, known[genome.id])
                continue
            in_flight.append((trial, genome))
        if not in_flight:
            break  # the sampler only re-proposes known genomes
        trial, genome = in_flight.pop(int(order.integers(len(in_flight))))
        true = ev.loss(genome)
        observed = true + args.noise * float(noise.standard_normal())
        latency = ev.latency(genome)
        known[genome.id] = [observed, latency]
        tell(trial, [observed, latency])
        out.append((true, observed, latency))
    return np.asarray(out, dtype=float)


# ---- metrics ---------------------------------------------------------------------------------------------------
def reported_best(points: np.ndarray, n: int, target: float) -> float:
    """True loss of the feasible evaluation with the lowest observed loss among the first n (nan: none)."""
    p = points[:n]
    feasible = p[p[:, 2] <= target]
    return float(feasible[np.argmin(feasible[:, 1]), 0]) if len(feasible) else math.nan


def front_hypervolume(points: np.ndarray, n: int, ref: tuple[float, float], lo: np.ndarray) -> float:
    front = observed_front(points[:n])
    box = (ref[0] - lo[0]) * (ref[1] - lo[1])
    return hypervolume(front[:, [0, 2]], ref) / box


def checkpoints(budget: int) -> list[int]:
    xs = [n for n in (25, 50, 75, 100, 150, 200, 300, 500) if n < budget]
    return xs + [budget]


_EVALUATOR: Objective | None = None
_ARGS = None


def _run_task(task: tuple) -> tuple:
    name, mode, seed = task
    t0 = time.process_time()
    pts = run_one(name, mode, seed, _ARGS, _EVALUATOR)
    return name, mode, seed, pts, time.process_time() - t0


@dataclass(frozen=True)
class Settings:
    budget: int                 # evaluations per run
    seeds: int
    samplers: tuple[str, ...]   # aging, agingK (K children per ask, surrogate-screened), random, randomw (random
                                # draws at the widest width meeting the target: a control), nsga2, tpe
    modes: tuple[str, ...]      # target and/or pareto
    workers: int                # trials in flight (asynchronous)
    population: int             # aging P, NSGA-II population, TPE startup trials
    sample_size: int            # aging S (tournament)
    target: float               # latency target in seconds (target mode)
    noise: float | None         # std of the per-evaluation loss noise; null: the recipe study's seed-to-seed std
    recipe: str                 # recipe_ablation's CSV, for that std
    objective: str              # surrogate or synthetic
    data: str                   # collected evaluations (surrogate objective)
    alpha: float | None         # ridge penalty; null: chosen by CV
    jobs: int                   # runs in parallel processes (at most 2 on a shared box)
    name: str | None            # file name of the results; null: searcher_<objective>
    out: str                    # folder for the markdown, figure and CSV


def main(args: Settings, meta: dict) -> None:
    names = list(args.samplers)
    modes = list(args.modes)
    if any(m not in ("target", "pareto") for m in modes):
        raise FlashsearchError(f"searcher_benchmark: modes takes target and/or pareto, got {args.modes!r}")
    if args.objective not in ("surrogate", "synthetic"):
        raise FlashsearchError(f"searcher_benchmark: objective is surrogate or synthetic, got {args.objective!r}")
    out = Path(args.out) / f"{args.name or 'searcher_' + args.objective}.md"
    noise_note = "given by the noise setting"
    if args.noise is None:
        noise, noise_note = recipe_noise(args.recipe)
        args = dataclasses.replace(args, noise=noise)

    t_wall = time.perf_counter()
    load = os.getloadavg()
    if args.objective == "synthetic":
        evaluator: Objective = Surrogate()
        title = "Searcher benchmark on a SYNTHETIC objective (W=10 asynchronous workers, noisy evaluations)"
        intro = ["**Synthetic**: latency = roofline H100 prediction (8192 decode tokens, batch 1); loss = an analytic "
                 "function of the genome (`synthetic_loss` in experiments/searcher_benchmark/run.py), not a trained "
                 "proxy."]
    else:
        df = load_evaluations(args.data)
        X, y = design(df)
        alpha = args.alpha if args.alpha is not None else choose_alpha(X, y)
        cv = cross_validate(X, y, alpha)
        model = RidgeSurrogate(alpha).fit(X, y)
        tokens = int(df["budget_tokens"].iloc[0])
        coef = sorted(zip(feature_names(), model.coef_), key=lambda t: -abs(t[1]))
        evaluator = FittedSurrogate(model)
        title = "Searcher benchmark on a SURROGATE objective (W=10 asynchronous workers, noisy evaluations)"
        intro = [
            "Latency = roofline H100 prediction (8192 decode tokens, batch 1); true loss = a ridge fit of real "
            "short-train evaluations; each evaluation observes true loss + noise.", "",
            f"Data: `{Path(args.data).name}`, {len(df)} distinct genomes of search_spaces/hybrid_1b.yaml's space, "
            f"each short-trained for real (ShortTrain, {tokens} tokens, seed 0; experiments/collect_evaluations). "
            f"Loss = validation bits/byte: min {y.min():.3f}, median {np.median(y):.3f}, max {y.max():.3f}, "
            f"std {y.std():.3f}.", "",
            f"Surrogate: ridge regression (alpha={alpha:g}, chosen by CV RMSE) on {X.shape[1]} standardized features. "
            f"5-fold CV x 5 repeats: Spearman {cv['spearman']:.3f} +- {cv['spearman_std']:.3f}, RMSE "
            f"{cv['rmse']:.4f} bpb (predicting the mean: {cv['baseline_rmse']:.4f}). Largest coefficients: "
            + ", ".join(f"{n} {c:+.3f}" for n, c in coef[:5]) + "."]

    # Feasible share of uniform draws at the target (what the constraint costs a searcher that ignores it).
    draws = [SPACE.decode(SPACE.repair(SPACE.sample(random.Random(f"draw/{i}")))) for i in range(200)]
    feasible_share = float(np.mean([evaluator.latency(g) <= args.target for g in draws]))
    spread_true = float(np.std([evaluator.loss(g) for g in draws]))

    global _EVALUATOR, _ARGS
    _EVALUATOR, _ARGS = evaluator, args
    tasks = [(name, mode, seed) for seed in range(args.seeds) for mode in modes for name in names]
    if args.jobs > 1:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(min(args.jobs, 2))
        results = pool.imap_unordered(_run_task, tasks)
    else:
        results = map(_run_task, tasks)
    runs: dict[tuple[str, str, int], np.ndarray] = {}
    cpu: dict[tuple[str, str], float] = {}
    for name, mode, seed, pts, secs in results:
        runs[(name, mode, seed)] = pts
        cpu[(name, mode)] = cpu.get((name, mode), 0.0) + secs
        print(f"{mode:6s} {name:7s} seed {seed}: {len(pts)} evaluations, {secs:.1f} CPU s", file=sys.stderr,
              flush=True)
    if args.jobs > 1:
        pool.close()

    xs = checkpoints(args.budget)
    rows = []
    ref = lo = None
    if "pareto" in modes:
        allp = np.concatenate([v for (n, m, s), v in runs.items() if m == "pareto"])[:, [0, 2]]
        lo, hi = allp.min(axis=0), allp.max(axis=0)
        ref = (float(hi[0] + 0.1 * (hi[0] - lo[0])), float(hi[1] + 0.1 * (hi[1] - lo[1])))
    worst = max(float(v[:, 0].max()) for v in runs.values())
    for (name, mode, seed), pts in runs.items():
        for n in xs:
            if mode == "target":
                value = reported_best(pts, n, args.target)
                rows.append({"mode": mode, "sampler": name, "seed": seed, "evaluations": n,
                             "metric": "true loss of reported best under target", "value": value,
                             "feasible": int(np.sum(pts[:n, 2] <= args.target))})
            else:
                rows.append({"mode": mode, "sampler": name, "seed": seed, "evaluations": n,
                             "metric": "normalized hypervolume (true values of observed front)",
                             "value": front_hypervolume(pts, n, ref, lo), "feasible": n})
    res = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    res.to_csv(out.with_suffix(".csv"), index=False)

    lines = [header(title, meta).rstrip("\n"),
             f"- wall {time.perf_counter() - t_wall:.0f} s; load average {load[0]:.1f} / {load[1]:.1f} / "
             f"{load[2]:.1f} at start (CPU cores shared with other jobs); optuna {optuna.__version__}, "
             f"{min(args.jobs, 2)} process(es).", "", *intro, "",
             f"Setup: staged (Nemotron-Flash) space; {args.budget} evaluations per run; {args.seeds} seeds "
             f"(0..{args.seeds - 1}); W = {args.workers} trials in flight, completion order random; evaluation "
             f"noise N(0, {args.noise:.4f}) bpb per evaluation ({noise_note}); for scale, the std of the true loss "
             f"over 200 uniform draws of the space is {spread_true:.4f}. aging: P={args.population}, "
             f"S={args.sample_size}; agingK: the same with children_per_ask=K (K mutated children per ask, the one a "
             f"ridge on generic genome features fitted to the completed trials predicts best is trained; in target "
             f"mode all K already meet the target). NSGA-II population {args.population}; TPE multivariate, constant "
             f"liar, {args.population} startup trials; random: Optuna RandomSampler; randomw: uniform draws each solved to "
             f"the widest width meeting the target (aging's random phase throughout; a control for the width solve). "
             f"Target mode: target "
             f"{args.target:g} s ({feasible_share:.0%} of uniform draws meet it)."]
    if ref is not None:
        lines.append(f"Hypervolume reference (loss, latency s) = ({ref[0]:.4f}, {ref[1]:.3f}), normalized by the "
                     f"box from the best true values any run saw ({lo[0]:.4f}, {lo[1]:.3f}).")
    for mode in modes:
        sub = res[res["mode"] == mode]
        lower = mode == "target"
        title = ("## Latency-target mode: true loss of the reported best candidate under the target (lower is "
                 "better)" if lower else "## Pareto mode: normalized hypervolume (higher is better)")
        lines += ["", title, "", "mean +- std over seeds" + (
            "; a run with no feasible evaluation yet counts as the worst true loss seen by any run "
            f"({worst:.4f})" if lower else ""), "",
                  "| sampler | " + " | ".join(f"@{n}" for n in xs) + " | CPU s per run |",
                  "|---|" + "---|" * (len(xs) + 1)]
        filled = sub.assign(value=sub["value"].fillna(worst))
        for name in names:
            cells = []
            for n in xs:
                v = filled[(filled["sampler"] == name) & (filled["evaluations"] == n)]["value"]
                cells.append(f"{v.mean():.4f} +- {v.std():.4f}")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {cpu[(name, mode)] / args.seeds:.1f} |")
        base = [n for n in names if n in BASELINES]
        aging = [n for n in names if n.startswith("aging")]
        if not base or not aging:
            continue
        lines += ["", "Paired comparison across seeds (Wilcoxon signed-rank, two-sided), each aging variant vs the "
                  "baseline with the best mean at that budget:", ""]
        for n in sorted({xs[len(xs) // 2], args.budget}):
            at = filled[filled["evaluations"] == n]
            means = {b: at[at["sampler"] == b]["value"].mean() for b in base}
            best = min(means, key=means.get) if lower else max(means, key=means.get)
            vb = at[at["sampler"] == best].sort_values("seed")["value"].to_numpy()
            for a in aging:
                va = at[at["sampler"] == a].sort_values("seed")["value"].to_numpy()
                lines.append(f"- @{n} evaluations, {a} vs {best}: {wilcoxon_line(va, vb, lower)}")

    plt = pyplot()
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.2), dpi=110, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        sub = res[res["mode"] == mode].assign(value=lambda d: d["value"].fillna(worst))
        for name in names:
            m = sub[sub["sampler"] == name].groupby("evaluations")["value"].agg(["mean", "sem"])
            ax.errorbar(m.index, m["mean"], yerr=m["sem"], label=name, lw=1.4, capsize=2)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("true loss of reported best (under target)" if mode == "target" else "normalized hypervolume")
        ax.set_title(f"{args.objective}, {mode} mode, W={args.workers}, noise {args.noise:.3f}; mean +- sem",
                     fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, out.with_suffix(".png"))
    lines += ["", f"Plot: {out.with_suffix('.png').name}; every run at every checkpoint: {out.with_suffix('.csv').name}."]
    print(write_text(out, "\n".join(lines) + "\n").read_text())


def recipe_noise(path: str | Path) -> tuple[float, str]:
    """Pooled seed-to-seed std of the same architecture and recipe in the recipe study (sqrt of the mean
    per-cell variance, ddof=1)."""
    d = pd.read_csv(path)
    d = d[d["error"].isna()] if "error" in d else d
    var = d.groupby(["arch", "variant"])["loss"].var(ddof=1).dropna()
    return float(np.sqrt(var.mean())), (f"pooled seed-to-seed std of {len(var)} (architecture, recipe) cells x "
                                        f"{int(d.groupby(['arch', 'variant']).size().median())} seeds in "
                                        f"{path}")


