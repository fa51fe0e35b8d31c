"""The pieces the paper studies in experiments/ are built from: rank agreement, the depth-width law fit and
the resumable training-job pool (the long runs themselves are not tests)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from flashsearch.genome import Genome
from flashsearch.studies.common import default_proxy, sample_genomes
from flashsearch.studies.jobs import TrainJob, run_jobs
from flashsearch.studies.ranking import rank_agreement, top_k_overlap
from flashsearch.studies.scaling_law import DepthWidthLaw, fit_depth_width_law, relative_errors


# ---- rank agreement ----------------------------------------------------------------------------------------
def test_identical_and_reversed_rankings():
    x = np.arange(10.0)
    same = rank_agreement(x, x * 3 + 1, k=3, n_boot=200)
    assert same.spearman == pytest.approx(1.0) and same.kendall == pytest.approx(1.0)
    assert same.top_k_overlap == 1.0
    rev = rank_agreement(x, -x, k=3, n_boot=200)
    assert rev.spearman == pytest.approx(-1.0) and rev.kendall == pytest.approx(-1.0)
    assert rev.top_k_overlap == 0.0


def test_known_values_one_swap():
    # one adjacent swap among 5: Spearman = 1 - 6*2/(5*24) = 0.9, Kendall = (9 - 1)/10 = 0.8
    a = rank_agreement([1, 2, 3, 4, 5], [2, 1, 3, 4, 5], k=2, n_boot=200)
    assert a.spearman == pytest.approx(0.9)
    assert a.kendall == pytest.approx(0.8)
    assert a.top_k_overlap == 1.0  # the swap stays inside the top 2
    assert a.spearman_ci[0] <= a.spearman_ci[1] <= 1.0


def test_top_k_overlap_counts_lowest_losses():
    proxy = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    ref = [0.1, 0.9, 0.3, 0.2, 0.8, 0.7]     # reference top 3: indices 0, 3, 2
    assert top_k_overlap(proxy, ref, 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k must be"):
        top_k_overlap(proxy, ref, 7)


@pytest.mark.parametrize("proxy,ref,msg", [
    ([1, 2, 3], [1, 2], "differ in length"),
    ([1, 2], [1, 2], "at least 3"),
    ([1, np.nan, 3], [1, 2, 3], "non-finite"),
])
def test_rank_agreement_bad_input(proxy, ref, msg):
    with pytest.raises(ValueError, match=msg):
        rank_agreement(proxy, ref)


# ---- depth-width law --------------------------------------------------------------------------------------
TRUE = DepthWidthLaw(L0=1.2, a=1.5, alpha=0.6, b=40.0, beta=0.9, c=300.0, gamma=0.45)


def test_law_fit_recovers_known_coefficients():
    grid = np.array(list(itertools.product([2, 4, 6, 8, 12, 16], [64, 96, 128, 192], [1e5, 1e6, 1e7])), float)
    D, W, N = grid.T
    law = fit_depth_width_law(D, W, N, TRUE.predict(D, W, N))
    for name in ("L0", "a", "alpha", "b", "beta", "c", "gamma"):
        assert getattr(law, name) == pytest.approx(getattr(TRUE, name), rel=0.03), name
    assert relative_errors(law, D, W, N, TRUE.predict(D, W, N)).max() < 1e-4


def test_law_extrapolates_from_small_to_large_models_under_noise():
    # N tied to depth and width as in a real grid (N ~ 11.5 D W^2), 0.3% noise; fit small, predict large
    rng = np.random.default_rng(0)
    D, W = np.array(list(itertools.product([2, 3, 4, 6, 8, 12, 16], [64, 96, 128, 192, 256])), float).T
    N = 11.5 * D * W ** 2
    L = TRUE.predict(D, W, N) * (1 + 0.003 * rng.standard_normal(len(D)))
    small = N <= np.quantile(N, 0.7)
    law = fit_depth_width_law(D[small], W[small], N[small], L[small])
    err = relative_errors(law, D[~small], W[~small], N[~small], TRUE.predict(D, W, N)[~small])
    assert err.max() < 0.02


def test_law_fit_bad_input():
    with pytest.raises(ValueError, match="at least 8"):
        fit_depth_width_law([1, 2], [1, 2], [1, 2], [1, 2])
    with pytest.raises(ValueError, match="positive"):
        fit_depth_width_law(*[np.r_[0.0, np.ones(8)]] * 3, np.ones(9))


# ---- shared study helpers -----------------------------------------------------------------------------------
def test_sample_genomes_distinct_and_reproducible():
    a = sample_genomes("search_spaces/hybrid_1b.yaml", 6, seed=3)
    b = sample_genomes("search_spaces/hybrid_1b.yaml", 6, seed=3)
    assert [g.id for g in a] == [g.id for g in b] and len({g.id for g in a}) == 6


def test_default_proxy_reads_the_shipped_yaml():
    kwargs, tokens = default_proxy("search_spaces/hybrid_1b.yaml")
    assert tokens > 0 and kwargs.get("seed") == 0


TINY = Genome(layer_types=("attention", "ffn"), d_model=256, n_heads=2, n_kv_heads=1, head_dim=128,
              ffn_ratio=2.0, vocab_size=256)


def test_run_jobs_writes_rows_and_resumes(tmp_path, capsys):
    proxy = {"eval_batches": 1, "seed": 0}
    jobs = [TrainJob(key=f"j{t}", genome=TINY, tokens=t, proxy=proxy, tags={"note": "x"}) for t in (512, 1024)]
    path = tmp_path / "rows.csv"
    rows = run_jobs(jobs, path, workers=2)
    assert sorted(rows["key"]) == ["j1024", "j512"]
    assert (rows["error"] == "").all() and np.isfinite(rows["loss"]).all()
    assert set(rows["note"]) == {"x"}
    before = pd.read_csv(path)
    capsys.readouterr()
    again = run_jobs(jobs, path, workers=2)  # everything cached: nothing retrained, same numbers
    assert "[1/" not in capsys.readouterr().out
    assert len(pd.read_csv(path)) == len(before)
    assert sorted(again["loss"]) == sorted(rows["loss"])


def test_run_jobs_records_a_failure_and_goes_on(tmp_path):
    jobs = [TrainJob(key="too-small", genome=TINY, tokens=8, proxy={"eval_batches": 1}),
            TrainJob(key="ok", genome=TINY, tokens=512, proxy={"eval_batches": 1})]
    rows = run_jobs(jobs, tmp_path / "rows.csv", workers=1).set_index("key")
    assert "less than one step" in rows.loc["too-small", "error"] and np.isnan(rows.loc["too-small", "loss"])
    assert rows.loc["ok", "error"] == "" and np.isfinite(rows.loc["ok", "loss"])


def test_run_jobs_rejects_duplicate_keys(tmp_path):
    job = TrainJob(key="same", genome=TINY, tokens=512)
    with pytest.raises(ValueError, match="unique"):
        run_jobs([job, job], tmp_path / "rows.csv")
