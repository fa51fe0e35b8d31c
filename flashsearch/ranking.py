"""Rank agreement of two orderings: the statistic the product reports when it checks a latency predictor against
measurements (proxies/latency/validate.py). The studies' bootstrap and top-k statistics build on it
(experiments/lib/ranking.py)."""

from __future__ import annotations


def rank_correlations(a, b) -> tuple[float, float]:
    """(Spearman rho, Kendall tau-b) of two equally long sequences; the one place both are computed."""
    from scipy.stats import kendalltau, spearmanr

    return float(spearmanr(a, b).statistic), float(kendalltau(a, b).statistic)
