"""Searcher benchmark: aging evolution vs random search vs NSGA-II vs TPE at equal evaluation budget.

*** The objective is SYNTHETIC. *** Latency is flashsearch's roofline predictor (analytic H100 decode latency of
the full-size genome, 8192 tokens, batch 1); quality is an analytic function of the genome written for this
benchmark (below, `synthetic_loss`) - not a trained proxy. It has the shape the paper describes (more
non-embedding parameters help with diminishing returns; operators differ in quality per parameter; a few
attention layers help recall, more add little; hybrids of two mixer types beat single-operator stacks; FFNs help
up to about half the operators) plus deterministic per-genome noise of +-0.01 standing in for proxy noise.
It ranks searchers on a landscape of realistic structure and cost; it says nothing about real architectures.

Two more objectives (`--objective`), both with the same roofline latency:

- `surrogate`: loss = a ridge regression on genome features (`genome_features`: operator counts by type, overall
  and per third of the stack, FFN count, width, depth, log parameters; standardized; `RidgeSurrogate`) fitted to
  the real short-train evaluations in experiments/data/short_train_evals.csv (experiments/collect_evaluations.py,
  the NAS-Bench-301 approach). Its cross-validated rank correlation and RMSE are reported in the results.
- `real`: loss = the real ShortTrain proxy at the CSV's budget (same settings as the collection), cached by genome
  id (the proxy is deterministic for its fixed seed) and seeded from the CSV. Meant for small runs.

Every searcher runs through the real driver (run_search, one worker, in-process) on the staged Nemotron-Flash
space with the same budget of evaluations (a cached replay of an already-evaluated genome is free and not counted).
The hypervolume of the (loss, latency) front after each evaluation uses one reference point for all runs: the
worst loss and latency seen by any run + 10% of the range; it is reported normalized by the box ideal..reference.

    python experiments/searcher_benchmark.py                    # 300 evaluations x 5 seeds x 4 searchers
    python experiments/searcher_benchmark.py --budget 100 --seeds 2 --out /tmp/s.md
    python experiments/searcher_benchmark.py --objective surrogate --budget 300 --seeds 5
    python experiments/searcher_benchmark.py --objective real --samplers aging,random,nsga2 --budget 20 \
        --seeds 2 --population 6 --sample-size 3

Writes experiments/results/searcher_<objective>.md (+ .png, + .csv of every curve).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from flashsearch.archive import hypervolume, trials_frame
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.roofline import RooflinePredictor
from flashsearch.search import AgingEvolutionSampler, run_search
from flashsearch.space import StagedSpace

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


class RidgeSurrogate:
    """Ridge regression y ~ b0 + w . z on standardized features z = (x - mean) / std (constant columns get std 1).

    Closed form w = (Z'Z + alpha I)^-1 Z'(y - mean y); the intercept is not penalized. numpy only."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(alpha)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "RidgeSurrogate":
        X, y = np.asarray(X, float), np.asarray(y, float)
        self.mean_, self.std_ = X.mean(axis=0), X.std(axis=0)
        self.std_[self.std_ < 1e-12] = 1.0
        Z = (X - self.mean_) / self.std_
        self.intercept_ = float(y.mean())
        A = Z.T @ Z + self.alpha * np.eye(Z.shape[1])
        self.coef_ = np.linalg.solve(A, Z.T @ (y - self.intercept_))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        Z = (np.atleast_2d(np.asarray(X, float)) - self.mean_) / self.std_
        return Z @ self.coef_ + self.intercept_


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
    """The evaluator: synthetic loss + roofline latency, cached per genome (the roofline costs ~10 ms)."""

    source = "roofline:h100 (synthetic loss)"

    def __init__(self) -> None:
        self.predictor = RooflinePredictor(device="h100")
        self.cache: dict[str, tuple[float, float]] = {}

    def loss(self, g: Genome) -> float:
        return synthetic_loss(g)

    def __call__(self, genome_json: str) -> dict:
        g = Genome.from_json(genome_json)
        if g.id not in self.cache:
            self.cache[g.id] = (self.loss(g), float(self.predictor.predict(g, WORKLOAD)))
        loss, latency = self.cache[g.id]
        return {"loss": loss, "latency": latency, "latency_source": self.source}


class FittedSurrogate(Surrogate):
    """Loss = RidgeSurrogate fitted to every row of the collected CSV; latency = roofline."""

    source = "roofline:h100 (surrogate loss)"

    def __init__(self, model: RidgeSurrogate) -> None:
        super().__init__()
        self.model = model

    def loss(self, g: Genome) -> float:
        return float(self.model.predict(genome_features(g)[None, :])[0])


class RealShortTrain(Surrogate):
    """Loss = the real ShortTrain proxy at the CSV's budget, cached by genome id (seeded from the CSV)."""

    source = "roofline:h100 (real short_train loss)"

    def __init__(self, df: pd.DataFrame, eval_batches: int) -> None:
        super().__init__()
        from flashsearch.proxies.base import Budget
        from flashsearch.proxies.quality.short_train import ShortTrain

        self.budget = Budget(tokens=int(df["budget_tokens"].iloc[0]))
        self.proxy = ShortTrain(threads=1, eval_batches=eval_batches)
        self.known = dict(zip(df["genome_id"], df["loss"].astype(float)))
        self.hits = self.misses = 0
        self.train_seconds = 0.0

    def loss(self, g: Genome) -> float:
        if g.id in self.known:
            self.hits += 1
            return self.known[g.id]
        self.misses += 1
        t0 = time.perf_counter()
        value = float(self.proxy.evaluate(g, self.budget).loss)
        self.train_seconds += time.perf_counter() - t0
        self.known[g.id] = value
        return value


def make_sampler(name: str, seed: int, population: int, sample_size: int):
    if name == "aging":
        return AgingEvolutionSampler(SPACE, population=population, sample_size=sample_size, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=population)
    raise ValueError(name)


def run_one(name: str, seed: int, budget: int, evaluator: Surrogate, population: int, sample_size: int):
    """Evaluated (loss, latency) points in evaluation order, plus the number of trials it took."""
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=make_sampler(name, seed, population, sample_size))
    evaluated, trials = 0, 0
    while evaluated < budget and trials < 4 * budget:  # samplers that re-propose genomes get free cached trials
        target = trials + (budget - evaluated)
        s = run_search(study, SPACE, evaluator, n_trials=target, workers=1, ray_address="local",
                       max_failures=budget)
        evaluated += s.evaluated
        trials = s.complete
    df = trials_frame(study)
    df = df[(df["state"] == "COMPLETE") & df["cached_from"].isna()].sort_values("number").head(budget)
    return df[["quality", "latency"]].to_numpy(dtype=float), int(len(study.trials))


def hv_curve(points: np.ndarray, ref: tuple[float, float], box: float, step: int = 5) -> np.ndarray:
    xs = list(range(step, len(points) + 1, step))
    if not xs or xs[-1] != len(points):
        xs.append(len(points))
    return np.array([hypervolume(points[:n], ref) / box for n in xs]), np.array(xs)


def evals_to_reach(curve: np.ndarray, xs: np.ndarray, level: float) -> float:
    hit = np.nonzero(curve >= level - 1e-12)[0]
    return float(xs[hit[0]]) if len(hit) else math.nan


_EVALUATOR = None


def _run_task(task: tuple) -> tuple:
    name, seed, budget, population, sample_size = task
    ev = _EVALUATOR
    before = (getattr(ev, "hits", 0), getattr(ev, "misses", 0), getattr(ev, "train_seconds", 0.0))
    t0 = time.perf_counter()
    pts, n_trials = run_one(name, seed, budget, ev, population, sample_size)
    after = (getattr(ev, "hits", 0), getattr(ev, "misses", 0), getattr(ev, "train_seconds", 0.0))
    return name, seed, pts, n_trials, time.perf_counter() - t0, tuple(a - b for a, b in zip(after, before))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=300, help="evaluations per run")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--population", type=int, default=20, help="aging P, NSGA-II population, TPE startup trials")
    ap.add_argument("--sample-size", type=int, default=5, help="aging S (tournament)")
    ap.add_argument("--objective", choices=("synthetic", "surrogate", "real"), default="synthetic")
    ap.add_argument("--data", default=str(DATA_CSV), help="collected evaluations (surrogate / real objectives)")
    ap.add_argument("--alpha", type=float, default=None, help="ridge penalty (default: chosen by CV)")
    ap.add_argument("--eval-batches", type=int, default=8,
                    help="real objective: ShortTrain eval_batches (must match the collection's)")
    ap.add_argument("--jobs", type=int, default=1, help="(sampler, seed) runs in parallel processes")
    ap.add_argument("--out", default=None, help="default experiments/results/searcher_<objective>.md")
    args = ap.parse_args()
    names = [s for s in args.samplers.split(",") if s]
    if args.out is None:
        args.out = str(Path(__file__).parent / "results" / f"searcher_{args.objective}.md")

    header: list[str] = []
    t_start = time.perf_counter()
    if args.objective == "synthetic":
        evaluator = Surrogate()
        title = "SYNTHETIC objective: roofline latency + analytic loss"
        header = ["# Searcher benchmark on a SYNTHETIC objective", "",
                  "**Synthetic**: latency = roofline H100 prediction (8192 decode tokens, batch 1); loss = an analytic "
                  "function of the genome (`synthetic_loss` in experiments/searcher_benchmark.py), not a trained "
                  "proxy. See searcher_surrogate.md / searcher_real.md for objectives built on real short-train "
                  "evaluations."]
    else:
        df = load_evaluations(args.data)
        X, y = design(df)
        alpha = args.alpha if args.alpha is not None else choose_alpha(X, y)
        cv = cross_validate(X, y, alpha)
        model = RidgeSurrogate(alpha).fit(X, y)
        tokens = int(df["budget_tokens"].iloc[0])
        coef = sorted(zip(feature_names(), model.coef_), key=lambda t: -abs(t[1]))
        data_lines = [
            f"Data: `{Path(args.data).name}`, {len(df)} distinct genomes of search_spaces/hybrid_1b.yaml's space, "
            f"each short-trained for real (ShortTrain, {tokens} tokens = {tokens // 512} AdamW steps of 4 x 128 "
            f"bytes, eval_batches={args.eval_batches}, seed 0; experiments/collect_evaluations.py). Loss = "
            f"validation bits/byte: min {y.min():.3f}, median {np.median(y):.3f}, max {y.max():.3f}, std {y.std():.3f}.",
            "",
            f"Surrogate: ridge regression (alpha={alpha:g}, chosen by CV RMSE over a grid) on {X.shape[1]} "
            "standardized features (operator counts by type, overall and per third of the stack; FFN count; width; "
            "depth; log10 parameters). 5-fold CV x 5 repeats, out-of-fold predictions pooled per repeat:", "",
            "| Spearman | Kendall | RMSE (bpb) | RMSE of predicting the mean |", "|---|---|---|---|",
            f"| {cv['spearman']:.3f} +- {cv['spearman_std']:.3f} | {cv['kendall']:.3f} +- {cv['kendall_std']:.3f} "
            f"| {cv['rmse']:.4f} +- {cv['rmse_std']:.4f} | {cv['baseline_rmse']:.4f} |", "",
            "Largest standardized coefficients (bpb per feature std): "
            + ", ".join(f"{n} {c:+.3f}" for n, c in coef[:6]) + "."]
        if args.objective == "surrogate":
            evaluator = FittedSurrogate(model)
            title = "SURROGATE objective: roofline latency + ridge fit of real short-train loss"
            header = ["# Searcher benchmark on a SURROGATE objective (fitted to real short-train evaluations)", "",
                      "Latency = roofline H100 prediction (8192 decode tokens, batch 1); loss = the surrogate's "
                      "prediction (no noise added), so this ranks searchers on a landscape shaped like the real "
                      "proxy's as far as a linear model captures it (see its CV numbers).", "", *data_lines]
        else:
            evaluator = RealShortTrain(df, args.eval_batches)
            title = "REAL short-train loss (small budget) + roofline latency"
            header = ["# Searcher benchmark on REAL short training (SMALL scale)", "",
                      "Latency = roofline H100 prediction; loss = the real ShortTrain proxy at the collection's "
                      "budget, run for every genome a searcher proposes that is not already in the collected CSV "
                      "(the proxy is deterministic for its seed, so the CSV is a cache). Few seeds and a small "
                      "evaluation budget: read the numbers as indicative only.", "", *data_lines[:1]]
    runs: dict[tuple[str, int], np.ndarray] = {}
    seconds: dict[str, float] = {n: 0.0 for n in names}
    global _EVALUATOR
    _EVALUATOR = evaluator
    tasks = [(name, seed, args.budget, args.population, args.sample_size) for seed in range(args.seeds)
             for name in names]
    if args.jobs > 1:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(args.jobs)
        results = pool.imap_unordered(_run_task, tasks)
    else:
        results = map(_run_task, tasks)
    for name, seed, pts, n_trials, secs, stats in results:
        seconds[name] += secs
        runs[(name, seed)] = pts
        if isinstance(evaluator, RealShortTrain):  # counts from the worker's copy of the evaluator
            evaluator.hits += stats[0]
            evaluator.misses += stats[1]
            evaluator.train_seconds += stats[2]
        print(f"{name:7s} seed {seed}: {len(pts)} evaluations ({n_trials} trials), {secs:.1f} s",
              file=sys.stderr, flush=True)
    if args.jobs > 1:
        pool.close()

    if isinstance(evaluator, RealShortTrain):
        header += ["", f"Evaluations: {evaluator.hits} answered from the collected CSV, {evaluator.misses} newly "
                   f"short-trained ({evaluator.train_seconds:.0f} s of training); total wall "
                   f"{time.perf_counter() - t_start:.0f} s."]
    allp = np.concatenate(list(runs.values()))
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    ref = (float(hi[0] + 0.1 * (hi[0] - lo[0])), float(hi[1] + 0.1 * (hi[1] - lo[1])))
    box = (ref[0] - lo[0]) * (ref[1] - lo[1])
    curves = {k: hv_curve(v, ref, box) for k, v in runs.items()}

    rows = []
    for (name, seed), (c, x) in curves.items():
        for n, h in zip(x, c):
            rows.append({"sampler": name, "seed": seed, "evaluations": int(n), "hypervolume": float(h)})
    curve_df = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    curve_df.to_csv(out.with_suffix(".csv"), index=False)

    mean = curve_df.groupby(["sampler", "evaluations"])["hypervolume"].agg(["mean", "std"]).reset_index()
    checkpoints = [n for n in ((10,) if args.budget <= 60 else ()) + (25, 50, 100, 150, 200, 300, 500) if n <= args.budget]
    if args.budget not in checkpoints:
        checkpoints.append(args.budget)

    # Evaluations each sampler needs to reach random search's final hypervolume (per seed, same seed's random).
    reach: dict[str, list[float]] = {n: [] for n in names}
    if "random" in names:
        for seed in range(args.seeds):
            level = curves[("random", seed)][0][-1]
            for name in names:
                c, x = curves[(name, seed)]
                reach[name].append(evals_to_reach(c, x, level))

    lines = [*header, "",
             f"Command: `{' '.join(['python experiments/searcher_benchmark.py', *sys.argv[1:]])}`",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), Python "
             f"{platform.python_version()}, optuna {optuna.__version__}", "",
             f"Space: staged (Nemotron-Flash), {args.budget} evaluations per run, {args.seeds} seeds (0..{args.seeds - 1}). "
             f"aging: P={args.population}, S={args.sample_size}, Pareto mode; NSGA-II population {args.population}; "
             f"TPE multivariate, {args.population} startup trials; random: Optuna RandomSampler. "
             f"Hypervolume reference (loss, latency s) = ({ref[0]:.4f}, {ref[1]:.3f}), normalized by the box from "
             f"the best values seen by any run ({lo[0]:.4f}, {lo[1]:.3f}).", "",
             "## Normalized hypervolume vs evaluations (mean +- std over seeds)", "",
             "| sampler | " + " | ".join(f"@{n}" for n in checkpoints) + " |",
             "|---|" + "---|" * len(checkpoints)]
    for name in names:
        cells = []
        for n in checkpoints:
            r = mean[(mean["sampler"] == name) & (mean["evaluations"] == n)]
            cells.append(f"{r['mean'].item():.4f} +- {r['std'].item():.4f}" if len(r) else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "random" in names:
        lines += ["", "## Evaluations to reach random search's final hypervolume (same seed)", "",
                  f"Goal: aging <= {args.budget / 3:.0f} (1/3 of the budget). 'never' = not reached within the budget.",
                  "", "| sampler | per seed | median | fraction of budget (median) |", "|---|---|---|---|"]
        for name in names:
            vals = reach[name]
            med = float(np.nanmedian(vals)) if not all(math.isnan(v) for v in vals) else math.nan
            per = ", ".join("never" if math.isnan(v) else str(int(v)) for v in vals)
            frac = "-" if math.isnan(med) else f"{med / args.budget:.2f}"
            lines.append(f"| {name} | {per} | {'never' if math.isnan(med) else int(med)} | {frac} |")
    lines += ["", "## Wall time per run (controller + evaluator, one in-process worker)", "",
              "| sampler | seconds per run |", "|---|---|"]
    lines += [f"| {n} | {seconds[n] / args.seeds:.1f} |" for n in names]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in names:
        m = mean[mean["sampler"] == name]
        ax.plot(m["evaluations"], m["mean"], label=name, lw=1.6)
        ax.fill_between(m["evaluations"], m["mean"] - m["std"], m["mean"] + m["std"], alpha=0.15)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("normalized hypervolume (loss, latency)")
    ax.set_title(f"{title}; mean +- std over {args.seeds} seeds", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    plt.close(fig)
    lines += ["", f"Plot: {out.with_suffix('.png').name}; every curve: {out.with_suffix('.csv').name}."]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
