"""The surrogate objective of the searcher benchmarks: a ridge regression on genome features, fitted to real
short-train evaluations (experiments/collect_evaluations), with the exact roofline latency (the NAS-Bench-301
approach). Shared by experiments/searcher_benchmark and experiments/fidelity_benchmark, with the simulation
pieces both use (asking Optuna for a genome as the driver does, the observed front, a paired Wilcoxon line).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.roofline import RooflinePredictor
from flashsearch.search import attrs
from flashsearch.search.driver import _record_repair  # the driver's rule: the study keeps the repaired params
from flashsearch.search.child_ranker import Ridge
from flashsearch.space import ArchDefaults, StagedSpace

# The hybrid_1b.yaml space (its space: section; these are also StagedSpace's defaults).
SPACE = StagedSpace(arch=ArchDefaults(op_options={"mamba2": {"d_state": 128, "expand": 2, "head_dim": 64}}))
WORKLOAD = Workload(device="h100", batch=1, prompt_len=128, decode_tokens=8192)
DATA_CSV = Path(__file__).resolve().parents[1] / "collect_evaluations" / "results" / "short_train_evals.csv"
FEATURE_MIXERS = ("attention", "mamba2", "deltanet")

# The same standardized ridge that aging's child ranker refits per ask.
RidgeSurrogate = Ridge


def layer_params(op: str, g: Genome) -> float:
    """Matrix parameters of one full-size layer."""
    d, q, kv = g.d_model, g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim
    if op == "ffn":
        return 3.0 * d * g.ffn_hidden
    if op in ("attention", "swa"):
        return 2.0 * d * q + 2.0 * d * kv
    if op == "mamba2":
        return 6.0 * d * d
    return 4.0 * d * d  # deltanet family, gla: q, k, v, o projections


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


def load_evaluations(path: str | Path = DATA_CSV) -> pd.DataFrame:
    """Read and validate the collected CSV: required columns, finite values, unique ids, ids match genomes."""
    df = pd.read_csv(path, comment="#")
    missing = [c for c in ("genome_id", "genome_json", "loss", "latency", "budget_tokens") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    if df.empty:
        raise ValueError(f"{path}: no rows")
    for c in ("loss", "latency"):
        if not np.isfinite(df[c].to_numpy(dtype=float)).all():
            raise ValueError(f"{path}: non-finite values in column {c!r}")
    if df["genome_id"].duplicated().any():
        raise ValueError(f"{path}: duplicate genome ids")
    if df["budget_tokens"].nunique() != 1:
        raise ValueError(f"{path}: mixed budgets {sorted(df['budget_tokens'].unique())}")
    for gid, gj in zip(df["genome_id"], df["genome_json"]):
        if Genome.from_json(gj).id != gid:
            raise ValueError(f"{path}: genome_id {gid} does not match its genome_json")
    return df


def design(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    X = np.stack([genome_features(Genome.from_json(j)) for j in df["genome_json"]])
    return X, df["loss"].to_numpy(dtype=float)


def cross_validate(X: np.ndarray, y: np.ndarray, alpha: float, folds: int = 5, repeats: int = 5,
                   seed: int = 0) -> dict[str, float]:
    """Repeated k-fold CV of RidgeSurrogate: pooled out-of-fold Spearman / Kendall / RMSE (mean +- std over
    repeats), and the RMSE of predicting the training-fold mean (baseline)."""
    from flashsearch.ranking import rank_correlations

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
        rho, tau = rank_correlations(pred, y)
        sp.append(rho)
        kt.append(tau)
        rmse.append(float(np.sqrt(np.mean((pred - y) ** 2))))
        base.append(float(np.sqrt(np.mean((mpred - y) ** 2))))
    return {"spearman": float(np.mean(sp)), "spearman_std": float(np.std(sp)), "kendall": float(np.mean(kt)),
            "kendall_std": float(np.std(kt)), "rmse": float(np.mean(rmse)), "rmse_std": float(np.std(rmse)),
            "baseline_rmse": float(np.mean(base))}


def choose_alpha(X: np.ndarray, y: np.ndarray, grid=(0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)) -> float:
    """The ridge penalty with the lowest 5-fold CV RMSE (seed 1, a different split from the reported CV)."""
    return min(grid, key=lambda a: cross_validate(X, y, a, repeats=2, seed=1)["rmse"])


class Objective:
    """A benchmark objective: loss_of(genome) (subclasses) + roofline latency, both cached per genome (the
    roofline costs ~10-30 ms)."""

    name = "objective"

    def __init__(self) -> None:
        self.predictor = RooflinePredictor(device="h100")
        self._loss: dict[str, float] = {}
        self._latency: dict[str, float] = {}

    def loss_of(self, g: Genome) -> float:
        raise NotImplementedError

    def loss(self, g: Genome) -> float:
        if g.id not in self._loss:
            self._loss[g.id] = self.loss_of(g)
        return self._loss[g.id]

    def latency(self, g: Genome) -> float:
        if g.id not in self._latency:
            self._latency[g.id] = float(self.predictor.predict(g, WORKLOAD))
        return self._latency[g.id]


class FittedSurrogate(Objective):
    """Loss = RidgeSurrogate fitted to every row of the collected CSV; latency = roofline."""

    name = "surrogate"

    def __init__(self, model: RidgeSurrogate) -> None:
        super().__init__()
        self.model = model

    def loss_of(self, g: Genome) -> float:
        return float(self.model.predict(genome_features(g)[None, :])[0])


def ask_genome(study: optuna.Study, dists: dict) -> tuple[optuna.trial.Trial, Genome]:
    """Ask the study for a trial and decode it as the driver does (repaired params recorded, genome id set)."""
    trial = study.ask(fixed_distributions=dict(dists))
    proposed = dict(trial.params)
    repaired = SPACE.repair(proposed)
    genome = SPACE.decode(repaired)
    if repaired != proposed:
        _record_repair(study, trial, dists, proposed, repaired)
    trial.set_user_attr(attrs.GENOME_ID, genome.id)
    return trial, genome


def observed_front(points: np.ndarray) -> np.ndarray:
    """Rows of `points` (true loss, observed loss, latency) on the non-dominated front of (observed loss,
    latency)."""
    obs = points[:, 1:3]
    keep = [i for i in range(len(obs))
            if not np.any(np.all(obs <= obs[i], axis=1) & np.any(obs < obs[i], axis=1))]
    return points[keep]


def wilcoxon_line(a: np.ndarray, b: np.ndarray, lower_is_better: bool) -> str:
    """Paired comparison of a and b across seeds: median / mean difference, wins, Wilcoxon signed-rank p."""
    from scipy.stats import wilcoxon

    d = a - b
    wins = int(np.sum(d < 0) if lower_is_better else np.sum(d > 0))
    p = float(wilcoxon(a, b).pvalue) if np.any(d != 0) else 1.0
    return f"median diff {np.median(d):+.4f}, mean diff {np.mean(d):+.4f}, better in {wins}/{len(d)} seeds, p = {p:.3g}"
