"""Child ranking for aging evolution (search.children_per_ask = K > 1): of K mutated children, train the one a
cheap model predicts best.

The model is a ridge regression on generic genome features, refitted on every ask from the study's completed
trials (stateless, like the sampler: the same study gives the same choice). Training a candidate costs minutes
to hours; fitting a 20-feature ridge on a few hundred trials costs a millisecond, so ranking K children per
training spends almost nothing to avoid training children the completed trials already argue against.
(Not to be confused with multi-fidelity *screening*, the cheap first rung every candidate trains at.)
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from flashsearch.genome import Genome

# Fewer completed trials than this: the fit is noise; the ranker keeps the first child (plain aging).
MIN_TRAIN = 8


def genome_features(genome: Genome, operators: Sequence[str]) -> np.ndarray:
    """Operator counts by type overall and in each half of the stack, width, depth, log10 of d_model^2 x depth
    (a parameter-scale proxy that needs no model code). `operators`: the space's operator names, fixed order."""
    layers = list(genome.layer_types)
    half = len(layers) // 2
    f = [float(layers.count(op)) for op in operators]
    f += [float(layers[:half].count(op)) for op in operators]
    f += [float(genome.d_model), float(len(layers)), math.log10(genome.d_model ** 2 * max(1, len(layers)))]
    return np.asarray(f, dtype=float)


class Ridge:
    """Ridge regression y ~ b0 + w . z on standardized features z = (x - mean) / std (constant columns get std 1).

    Closed form w = (Z'Z + alpha I)^-1 Z'(y - mean y); the intercept is not penalised. numpy only."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(alpha)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "Ridge":
        X, y = np.asarray(X, float), np.asarray(y, float)              # X: [n, f], y: [n]
        self.mean_, self.std_ = X.mean(axis=0), X.std(axis=0)
        self.std_[self.std_ < 1e-12] = 1.0
        Z = (X - self.mean_) / self.std_                                 # [n, f]
        self.intercept_ = float(y.mean())
        self.coef_ = np.linalg.solve(Z.T @ Z + self.alpha * np.eye(Z.shape[1]), Z.T @ (y - self.intercept_))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:                     # X: [m, f] -> [m]
        Z = (np.atleast_2d(np.asarray(X, float)) - self.mean_) / self.std_
        return Z @ self.coef_ + self.intercept_


def ridge_predict(X: np.ndarray, y: np.ndarray, X_new: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Ridge fitted on (X [n, f], y [n]), predicted at X_new [m, f] -> [m]."""
    return Ridge(alpha).fit(X, y).predict(X_new)


def pick_child(children: Sequence[np.ndarray], trained: Sequence[np.ndarray], losses: Sequence[float],
               latencies: Sequence[float] | None = None, child_latencies: Sequence[float] | None = None,
               weight: float | None = None) -> int:
    """Index of the child to train.

    Loss-only (weight None, the latency-target mode where every child already meets the target): lowest
    predicted loss. Pareto mode (weight w in [0, 1]): lowest max(w * loss', (1 - w) * latency'), predicted loss
    and the children's latencies (given, or predicted by a second ridge on log latency) min-max normalised over
    the trained trials, the same scalarisation the parent tournament uses. Too few trained trials: child 0."""
    if len(children) <= 1 or len(trained) < MIN_TRAIN:
        return 0
    X, Xc = np.stack(trained), np.stack(children)
    y = np.asarray(losses, dtype=float)
    loss_hat = ridge_predict(X, y, Xc)
    if weight is None:
        return int(np.argmin(loss_hat))
    lat = np.asarray(latencies, dtype=float)
    lat_hat = (np.asarray(child_latencies, dtype=float) if child_latencies is not None
               else np.exp(ridge_predict(X, np.log(lat), Xc)))

    def norm(v: np.ndarray, ref: np.ndarray) -> np.ndarray:
        span = ref.max() - ref.min()
        return (v - ref.min()) / (span if span > 0 else 1.0)

    score = np.maximum(weight * norm(loss_hat, y), (1.0 - weight) * norm(lat_hat, lat))
    return int(np.argmin(score))


class ChildRanker:
    """pick_child over genomes, with each genome's features computed once (they are a pure function of it).

    operators: the space's mixers in a fixed order (FFN is added), so feature columns mean the same on every ask.
    latency_fn: Pareto mode with a cheap latency predictor: the children's latencies are predicted, not fitted."""

    def __init__(self, operators: Sequence[str], latency_fn: Callable[[Genome], float] | None = None) -> None:
        self.operators = tuple(dict.fromkeys((*operators, "ffn")))
        self.latency_fn = latency_fn
        self._features: dict[str, np.ndarray] = {}

    def features(self, genome_id: str, genome: Callable[[], Genome]) -> np.ndarray:
        f = self._features.get(genome_id)
        if f is None:
            f = self._features[genome_id] = genome_features(genome(), self.operators)
        return f

    def pick(self, children: Sequence[Genome], trained: Sequence[tuple[str, Callable[[], Genome], float, float]],
             weight: float | None) -> int:
        """Index of the child to train. trained: (genome id, genome, loss, latency) of every completed trial;
        weight: the Pareto scalarisation's (None in latency-target mode: loss only)."""
        if len(children) <= 1:
            return 0
        child_lat = None
        if weight is not None and self.latency_fn is not None:
            child_lat = [self.latency_fn(g) for g in children]
        return pick_child([self.features(g.id, lambda g=g: g) for g in children],
                          [self.features(gid, genome) for gid, genome, _, _ in trained],
                          [loss for _, _, loss, _ in trained], [lat for _, _, _, lat in trained], child_lat, weight)


__all__ = ["genome_features", "Ridge", "ridge_predict", "pick_child", "ChildRanker", "MIN_TRAIN"]
