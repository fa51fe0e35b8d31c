"""Searcher benchmark: aging evolution vs random search vs NSGA-II vs TPE with W asynchronous workers and noisy
evaluations, in latency-target mode (the paper's Algorithm 1) and in Pareto mode, at equal evaluation budgets.

What aging evolution is for: many workers finishing out of order, and a quality proxy whose value for one
architecture varies from run to run. So every run here keeps W = 10 trials in flight (Optuna ask/tell on the real
samplers; each time, one in-flight trial chosen at random finishes and a new one is asked: asynchronous
completion, simulated without processes), and each evaluation's loss is the objective's loss plus Gaussian noise
re-drawn per evaluation (a replay of an already-evaluated genome returns its recorded result, as the driver does).

Objectives (`--objective`), both with flashsearch's roofline latency (analytic H100 decode latency of the
full-size genome, 8192 tokens, batch 1), which is exact and free:

- `surrogate`: loss = a ridge regression on genome features (`genome_features`: operator counts by type, overall
  and per third of the stack, FFN count, width, depth, log parameters; standardized; `RidgeSurrogate`) fitted to
  the real short-train evaluations in experiments/data/short_train_evals.csv (experiments/collect_evaluations.py,
  the NAS-Bench-301 approach). Its cross-validated rank correlation and RMSE are reported in the results.
- `synthetic`: loss = an analytic function of the genome written for this benchmark (`synthetic_loss`) with the
  shape the paper describes; it says nothing about real architectures. Unlike the surrogate it is not linear in
  the screening features of aging's `children_per_ask` option, so it checks that option on a landscape its model
  does not match.

Modes: `target` - search.target_latency = --target seconds; aging solves every candidate's width (widest meeting
the target, infeasible children skipped); NSGA-II and TPE see the constraint latency - target <= 0 through
Trial.set_constraint (Optuna 5's replacement for constraints_func), as the driver does; random ignores it;
`randomw` (a control) is random search whose every draw is solved to the widest width meeting the target. Metric:
the TRUE (noise-free) loss of the candidate the searcher reports, i.e. the feasible evaluation with the lowest
observed loss. `pareto` - metric: normalized hypervolume of the TRUE (loss, latency) of the evaluations on the
observed front, one reference point for all runs (worst true values seen + 10% of the range).

Paired across seeds: seed s gives every searcher the same noise stream and completion-order stream, and each
sampler its own seed-s start-up stream; Wilcoxon signed-rank tests (scipy) compare each aging variant with the
best baseline per mode.

    python experiments/searcher_benchmark.py --objective surrogate --budget 150 --seeds 10 --jobs 2
    python experiments/searcher_benchmark.py --budget 60 --seeds 2 --modes target --out /tmp/s.md

Writes experiments/results/searcher_<objective>.md (+ .png, + .csv of every run's metric at each checkpoint).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from flashsearch.archive import hypervolume
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.roofline import RooflinePredictor
from flashsearch.search import AgingEvolutionSampler
from flashsearch.search.driver import _record_repair  # the driver's rule: the study keeps the repaired params
from flashsearch.search.latency_target import CONSTRAINT_KEY
from flashsearch.search.screening import Ridge
from flashsearch.space import StagedSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


optuna.logging.set_verbosity(optuna.logging.WARNING)

from flashsearch.space import ArchDefaults  # noqa: E402

SPACE = StagedSpace(arch=ArchDefaults(op_options={"mamba2": {"d_state": 128, "expand": 2, "head_dim": 64}}))
WORKLOAD = Workload(device="h100", batch=1, prompt_len=128, decode_tokens=8192)
SAMPLERS = ("aging", "random", "nsga2", "tpe")

# Quality per parameter of each token mixer (synthetic; ordered like the paper's same-latency table:
# DeltaNet > Gated DeltaNet > GLA > Mamba2 > SWA, full attention best per layer).
MIXER_QUALITY = {"attention": 1.00, "deltanet": 0.93, "gated_deltanet": 0.91, "gla": 0.88, "mamba2": 0.86,
                 "swa": 0.84}


def layer_params(op: str, g: Genome) -> float:
    d, q, kv = g.d_model, g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim
    if op == "ffn":
        return 3.0 * d * g.ffn_hidden
    if op in ("attention", "swa"):
        return 2.0 * d * q + 2.0 * d * kv
    if op == "mamba2":
        return 6.0 * d * d
    return 4.0 * d * d  # deltanet family, gla: q, k, v, o projections


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


# ---- surrogate of real short-train evaluations --------------------------------------------------------------
DATA_CSV = Path(__file__).parent / "data" / "short_train_evals.csv"
FEATURE_MIXERS = ("attention", "mamba2", "deltanet")


def feature_names() -> list[str]:
    names = [f"n_{op}" for op in FEATURE_MIXERS] + ["n_ffn"]
    names += [f"third{t}_{op}" for t in range(3) for op in (*FEATURE_MIXERS, "ffn")]
    return names + ["d_model", "n_layers", "log_params"]


def genome_features(g: Genome) -> np.ndarray:
    """Features of a genome (order = feature_names()): operator counts overall and in each third of the layer
    stack (by position), width, depth and log10 of the non-embedding parameter count."""
    layers = list(g.layer_types)
    n = len(layers)
    f = [float(layers.count(op)) for op in (*FEATURE_MIXERS, "ffn")]
    for t in range(3):
        part = layers[(t * n) // 3:((t + 1) * n) // 3]
        f += [float(part.count(op)) for op in (*FEATURE_MIXERS, "ffn")]
    n_params = sum(layer_params(op, g) for op in layers)
    f += [float(g.d_model), float(n), math.log10(max(n_params, 1.0))]
    return np.array(f, dtype=float)


# The same standardized ridge that aging's screening refits per ask.
RidgeSurrogate = Ridge


def load_evaluations(path: str | Path = DATA_CSV) -> pd.DataFrame:
    """The collected CSV, validated (columns, finite values, unique ids matching the genomes, one budget)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from collect_evaluations import load_evaluations as _load

    return _load(path)


def design(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    X = np.stack([genome_features(Genome.from_json(j)) for j in df["genome_json"]])
    return X, df["loss"].to_numpy(dtype=float)


def cross_validate(X: np.ndarray, y: np.ndarray, alpha: float, folds: int = 5, repeats: int = 5,
                   seed: int = 0) -> dict[str, float]:
    """Repeated k-fold CV of RidgeSurrogate: pooled out-of-fold Spearman / Kendall / RMSE (mean +- std over
    repeats), and the RMSE of predicting the training-fold mean (baseline)."""
    from scipy.stats import kendalltau, spearmanr

    rng = np.random.default_rng(seed)
    sp, kt, rmse, base = [], [], [], []
    for _ in range(repeats):
        idx = rng.permutation(len(y))
        pred, mpred = np.empty_like(y), np.empty_like(y)
        for k in range(folds):
            test = idx[k::folds]
            train = np.setdiff1d(idx, test)
            pred[test] = RidgeSurrogate(alpha).fit(X[train], y[train]).predict(X[test])
            mpred[test] = y[train].mean()
        sp.append(spearmanr(pred, y).statistic)
        kt.append(kendalltau(pred, y).statistic)
        rmse.append(float(np.sqrt(np.mean((pred - y) ** 2))))
        base.append(float(np.sqrt(np.mean((mpred - y) ** 2))))
    return {"spearman": float(np.mean(sp)), "spearman_std": float(np.std(sp)), "kendall": float(np.mean(kt)),
            "kendall_std": float(np.std(kt)), "rmse": float(np.mean(rmse)), "rmse_std": float(np.std(rmse)),
            "baseline_rmse": float(np.mean(base))}


def choose_alpha(X: np.ndarray, y: np.ndarray, grid=(0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)) -> float:
    """The ridge penalty with the lowest 5-fold CV RMSE (seed 1, a different split from the reported CV)."""
    return min(grid, key=lambda a: cross_validate(X, y, a, repeats=2, seed=1)["rmse"])




class Surrogate:
    """The objective: synthetic loss + roofline latency, both cached per genome (the roofline costs ~10-30 ms)."""

    name = "synthetic"

    def __init__(self) -> None:
        self.predictor = RooflinePredictor(device="h100")
        self._loss: dict[str, float] = {}
        self._latency: dict[str, float] = {}

    def loss_of(self, g: Genome) -> float:
        return synthetic_loss(g)

    def loss(self, g: Genome) -> float:
        if g.id not in self._loss:
            self._loss[g.id] = self.loss_of(g)
        return self._loss[g.id]

    def latency(self, g: Genome) -> float:
        if g.id not in self._latency:
            self._latency[g.id] = float(self.predictor.predict(g, WORKLOAD))
        return self._latency[g.id]


class FittedSurrogate(Surrogate):
    """Loss = RidgeSurrogate fitted to every row of the collected CSV; latency = roofline."""

    name = "surrogate"

    def __init__(self, model: RidgeSurrogate) -> None:
        super().__init__()
        self.model = model

    def loss_of(self, g: Genome) -> float:
        return float(self.model.predict(genome_features(g)[None, :])[0])


# ---- searchers -----------------------------------------------------------------------------------------------
BASELINES = ("random", "randomw", "nsga2", "tpe")


def make_sampler(name: str, seed: int, args, ev: Surrogate, target: float | None):
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
    raise SystemExit(f"unknown sampler {name!r}: use aging, agingK (K children per ask), random, randomw, nsga2 "
                     "or tpe")


def ask_genome(study: optuna.Study, dists: dict) -> tuple[optuna.trial.Trial, Genome]:
    """Ask the study for a trial and decode it as the driver does (repaired params recorded, genome id set)."""
    trial = study.ask(fixed_distributions=dict(dists))
    proposed = dict(trial.params)
    repaired = SPACE.repair(proposed)
    genome = SPACE.decode(repaired)
    if repaired != proposed:
        _record_repair(study, trial, dists, proposed, repaired)
    trial.set_user_attr("genome_id", genome.id)
    return trial, genome


def run_one(name: str, mode: str, seed: int, args, ev: Surrogate) -> np.ndarray:
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
                trial.set_user_attr("cached_from", -1)
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


def observed_front(points: np.ndarray) -> np.ndarray:
    """Rows of `points` on the non-dominated front of (observed loss, latency)."""
    obs = points[:, 1:3]
    keep = [i for i in range(len(obs))
            if not np.any(np.all(obs <= obs[i], axis=1) & np.any(obs < obs[i], axis=1))]
    return points[keep]


def front_hypervolume(points: np.ndarray, n: int, ref: tuple[float, float], lo: np.ndarray) -> float:
    front = observed_front(points[:n])
    box = (ref[0] - lo[0]) * (ref[1] - lo[1])
    return hypervolume(front[:, [0, 2]], ref) / box


def checkpoints(budget: int) -> list[int]:
    xs = [n for n in (25, 50, 75, 100, 150, 200, 300, 500) if n < budget]
    return xs + [budget]


_EVALUATOR: Surrogate | None = None
_ARGS = None


def _run_task(task: tuple) -> tuple:
    name, mode, seed = task
    t0 = time.process_time()
    pts = run_one(name, mode, seed, _ARGS, _EVALUATOR)
    return name, mode, seed, pts, time.process_time() - t0


def wilcoxon_line(a: np.ndarray, b: np.ndarray, lower_is_better: bool) -> str:
    from scipy.stats import wilcoxon

    d = a - b
    wins = int(np.sum(d < 0) if lower_is_better else np.sum(d > 0))
    p = float(wilcoxon(a, b).pvalue) if np.any(d != 0) else 1.0
    return f"median diff {np.median(d):+.4f}, mean diff {np.mean(d):+.4f}, better in {wins}/{len(d)} seeds, p = {p:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=150, help="evaluations per run")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--samplers", default="aging,aging8,random,nsga2,tpe",
                    help="aging, agingK (K children per ask, surrogate-screened), random, randomw (random draws "
                         "at the widest width meeting the target: a control for aging's width solve), nsga2, tpe")
    ap.add_argument("--modes", default="target,pareto")
    ap.add_argument("--workers", type=int, default=10, help="trials in flight (asynchronous)")
    ap.add_argument("--population", type=int, default=20, help="aging P, NSGA-II population, TPE startup trials")
    ap.add_argument("--sample-size", type=int, default=5, help="aging S (tournament)")
    ap.add_argument("--target", type=float, default=10.0, help="latency target in seconds (target mode)")
    ap.add_argument("--noise", type=float, default=None,
                    help="std of the per-evaluation loss noise (default: the recipe study's seed-to-seed std)")
    ap.add_argument("--objective", choices=("synthetic", "surrogate"), default="surrogate")
    ap.add_argument("--data", default=str(DATA_CSV), help="collected evaluations (surrogate objective)")
    ap.add_argument("--alpha", type=float, default=None, help="ridge penalty (default: chosen by CV)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (at most 2 on a shared box)")
    ap.add_argument("--out", default=None, help="default experiments/results/searcher_<objective>.md")
    args = ap.parse_args()
    names = [s for s in args.samplers.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("target", "pareto") for m in modes):
        raise SystemExit(f"--modes takes target and/or pareto, got {args.modes!r}")
    if args.out is None:
        args.out = str(Path(__file__).parent / "results" / f"searcher_{args.objective}.md")
    noise_note = "given by --noise"
    if args.noise is None:
        args.noise, noise_note = recipe_noise()

    t_wall = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    load = os.getloadavg()
    if args.objective == "synthetic":
        evaluator: Surrogate = Surrogate()
        header = ["# Searcher benchmark on a SYNTHETIC objective (W=10 asynchronous workers, noisy evaluations)", "",
                  "**Synthetic**: latency = roofline H100 prediction (8192 decode tokens, batch 1); loss = an analytic "
                  "function of the genome (`synthetic_loss` in experiments/searcher_benchmark.py), not a trained "
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
        header = [
            "# Searcher benchmark on a SURROGATE objective (W=10 asynchronous workers, noisy evaluations)", "",
            "Latency = roofline H100 prediction (8192 decode tokens, batch 1); true loss = a ridge fit of real "
            "short-train evaluations; each evaluation observes true loss + noise.", "",
            f"Data: `{Path(args.data).name}`, {len(df)} distinct genomes of search_spaces/hybrid_1b.yaml's space, "
            f"each short-trained for real (ShortTrain, {tokens} tokens, seed 0; experiments/collect_evaluations.py). "
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res.to_csv(out.with_suffix(".csv"), index=False)

    lines = [*header, "",
             f"Command: `{' '.join(['python experiments/searcher_benchmark.py', *sys.argv[1:]])}`  ",
             f"Date: {started:%Y-%m-%d %H:%M} UTC; wall {time.perf_counter() - t_wall:.0f} s.  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs (load average "
             f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start), Python {platform.python_version()}, "
             f"optuna {optuna.__version__}, {min(args.jobs, 2)} process(es).", "",
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

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    plt.close(fig)
    lines += ["", f"Plot: {out.with_suffix('.png').name}; every run at every checkpoint: {out.with_suffix('.csv').name}."]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)


RECIPE_CSV = Path(__file__).parent / "results" / "recipe_ablation.csv"


def recipe_noise() -> tuple[float, str]:
    """Pooled seed-to-seed std of the same architecture and recipe in the recipe study (sqrt of the mean
    per-cell variance, ddof=1)."""
    d = pd.read_csv(RECIPE_CSV)
    d = d[d["error"].isna()] if "error" in d else d
    var = d.groupby(["arch", "variant"])["loss"].var(ddof=1).dropna()
    return float(np.sqrt(var.mean())), (f"pooled seed-to-seed std of {len(var)} (architecture, recipe) cells x "
                                        f"{int(d.groupby(['arch', 'variant']).size().median())} seeds in "
                                        "experiments/results/recipe_ablation.csv")


if __name__ == "__main__":
    main()
