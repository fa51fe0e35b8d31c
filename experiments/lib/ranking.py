"""How well a cheap proxy ranks architectures the way a more expensive one does.

Both inputs are losses (lower is better). Spearman and Kendall (tau-b, tie-aware) come from scipy; the top-k
overlap is the fraction of the reference's k best that the proxy also puts in its k best, which is what a
search that exports its top candidates actually depends on. A bootstrap over genomes gives each one's spread,
and a paired bootstrap says whether one proxy ranks a reference better than another does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flashsearch.ranking import rank_correlations


@dataclass(frozen=True)
class RankAgreement:
    n: int
    spearman: float
    kendall: float
    k: int
    top_k_overlap: float                 # |top-k(proxy) & top-k(reference)| / k
    spearman_ci: tuple[float, float]     # bootstrap 5th..95th percentile over genomes
    kendall_ci: tuple[float, float] = (float("nan"), float("nan"))
    top_k_ci: tuple[float, float] = (float("nan"), float("nan"))  # of the overlap fraction


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


def rank_agreement(proxy, reference, k: int = 5, n_boot: int = 2000, seed: int = 0) -> RankAgreement:
    """Spearman, Kendall tau-b, top-k overlap, and bootstrap 5-95% intervals over genomes for each."""
    p, r = _as_losses("proxy", proxy), _as_losses("reference", reference)
    if len(p) != len(r):
        raise ValueError(f"proxy and reference differ in length ({len(p)} vs {len(r)})")
    if len(p) < 3:
        raise ValueError(f"rank agreement needs at least 3 genomes, got {len(p)}")
    rho, tau = rank_correlations(p, r)
    boots = []
    for idx in _resamples(len(p), n_boot, seed):
        if np.ptp(p[idx]) > 0 and np.ptp(r[idx]) > 0:  # a resample of one repeated genome has no ranking
            boots.append((*rank_correlations(p[idx], r[idx]), top_k_overlap(p[idx], r[idx], min(k, len(idx)))))
    ci = np.percentile(np.asarray(boots), [5, 95], axis=0) if boots else np.full((2, 3), np.nan)
    return RankAgreement(n=len(p), spearman=rho, kendall=tau, k=k, top_k_overlap=top_k_overlap(p, r, k),
                         spearman_ci=(float(ci[0, 0]), float(ci[1, 0])), kendall_ci=(float(ci[0, 1]), float(ci[1, 1])),
                         top_k_ci=(float(ci[0, 2]), float(ci[1, 2])))


def _resamples(n: int, n_boot: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n, n)


def spearman_gap(a, b, reference, n_boot: int = 2000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """How much better `a` ranks `reference` than `b` does: rho(a, ref) - rho(b, ref), with a paired bootstrap
    5-95% interval (the same resampled genomes for both, so their shared noise cancels)."""
    from scipy.stats import spearmanr

    x, y, r = (_as_losses(n, v) for n, v in (("a", a), ("b", b), ("reference", reference)))
    if not len(x) == len(y) == len(r) >= 3:
        raise ValueError(f"spearman_gap needs three equally long sequences of at least 3, got {len(x)}, {len(y)}, "
                         f"{len(r)}")
    gap = float(spearmanr(x, r).statistic - spearmanr(y, r).statistic)
    boots = [spearmanr(x[i], r[i]).statistic - spearmanr(y[i], r[i]).statistic
             for i in _resamples(len(r), n_boot, seed) if min(np.ptp(x[i]), np.ptp(y[i]), np.ptp(r[i])) > 0]
    lo, hi = np.percentile(boots, [5, 95]) if boots else (float("nan"), float("nan"))
    return gap, (float(lo), float(hi))
