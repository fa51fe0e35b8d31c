"""How well a cheap proxy ranks architectures the way a more expensive one does.

Both inputs are losses (lower is better). Spearman and Kendall (tau-b, tie-aware) come from scipy; the top-k
overlap is the fraction of the reference's k best that the proxy also puts in its k best, which is what a
search that exports its top candidates actually depends on. A bootstrap over genomes gives Spearman's spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankAgreement:
    n: int
    spearman: float
    kendall: float
    k: int
    top_k_overlap: float                 # |top-k(proxy) & top-k(reference)| / k
    spearman_ci: tuple[float, float]     # bootstrap 5th..95th percentile over genomes


def _as_losses(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of losses, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite losses; drop failed evaluations first")
    return a


def top_k_overlap(proxy, reference, k: int) -> float:
    """Fraction of the reference's k lowest losses that are among the proxy's k lowest (ties by index)."""
    p, r = _as_losses("proxy", proxy), _as_losses("reference", reference)
    if not 1 <= k <= len(p):
        raise ValueError(f"k must be in 1..{len(p)}, got {k}")
    best_p = set(np.argsort(p, kind="stable")[:k].tolist())
    best_r = set(np.argsort(r, kind="stable")[:k].tolist())
    return len(best_p & best_r) / k


def rank_correlations(a, b) -> tuple[float, float]:
    """(Spearman rho, Kendall tau-b) of two equally long sequences; the one place both are computed."""
    from scipy.stats import kendalltau, spearmanr

    return float(spearmanr(a, b).statistic), float(kendalltau(a, b).statistic)


def rank_agreement(proxy, reference, k: int = 5, n_boot: int = 2000, seed: int = 0) -> RankAgreement:
    """Spearman, Kendall tau-b, top-k overlap and a bootstrap interval for Spearman."""
    from scipy.stats import spearmanr

    p, r = _as_losses("proxy", proxy), _as_losses("reference", reference)
    if len(p) != len(r):
        raise ValueError(f"proxy and reference differ in length ({len(p)} vs {len(r)})")
    if len(p) < 3:
        raise ValueError(f"rank agreement needs at least 3 genomes, got {len(p)}")
    rho, tau = rank_correlations(p, r)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(p), len(p))
        if np.ptp(p[idx]) > 0 and np.ptp(r[idx]) > 0:  # a resample of one repeated genome has no ranking
            boots.append(spearmanr(p[idx], r[idx]).statistic)
    lo, hi = (np.percentile(boots, [5, 95]) if boots else (float("nan"), float("nan")))
    return RankAgreement(n=len(p), spearman=rho, kendall=tau, k=k, top_k_overlap=top_k_overlap(p, r, k),
                         spearman_ci=(float(lo), float(hi)))
