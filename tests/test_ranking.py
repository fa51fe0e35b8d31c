"""flashsearch.ranking: the rank agreement the latency validator reports (Spearman rho, Kendall tau-b)."""

from __future__ import annotations

import pytest

from flashsearch.ranking import rank_correlations


def test_one_adjacent_swap_among_five():
    # Spearman = 1 - 6 * 2 / (5 * 24) = 0.9; Kendall = (9 concordant - 1 discordant) / 10 = 0.8
    rho, tau = rank_correlations([1, 2, 3, 4, 5], [2, 1, 3, 4, 5])
    assert rho == pytest.approx(0.9) and tau == pytest.approx(0.8)


def test_monotone_transforms_keep_the_ranking_and_reversal_flips_it():
    x = [0.3, 1.2, 0.7, 5.0, 2.2]
    assert rank_correlations(x, [v ** 3 + 1 for v in x]) == pytest.approx((1.0, 1.0))
    assert rank_correlations(x, [-v for v in x]) == pytest.approx((-1.0, -1.0))


def test_ties_use_tau_b():
    # x has one tied pair: tau-b = (concordant - discordant) / sqrt((n0 - n1) * n0) = 5 / sqrt(5 * 6)
    _, tau = rank_correlations([1, 1, 2, 3], [1, 2, 3, 4])
    assert tau == pytest.approx(5 / (5 * 6) ** 0.5)
