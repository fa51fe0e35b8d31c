"""The study library the studies are built from (experiments/lib): rank agreement, the depth-width law fit, the
resumable training-job pool and the ladder cache, with their settings-hashed cache keys (the long runs
themselves are not tests). Run with `python -m pytest experiments/tests` or `python -m experiments check`."""

from __future__ import annotations

import json

import itertools

import numpy as np
import pandas as pd
import pytest

from flashsearch.genome import Genome

from experiments.lib.common import default_proxy, sample_genomes
from experiments.lib.jobs import TrainJob, run_jobs
from experiments.lib.ranking import rank_agreement, spearman_gap, top_k_overlap
from experiments.lib.scaling_law import DepthWidthLaw, fit_depth_width_law, relative_errors


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


def test_bootstrap_intervals_bracket_the_statistics():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=25)
    noisy = ref + rng.normal(scale=0.7, size=25)
    a = rank_agreement(noisy, ref, k=5, n_boot=400)
    for value, (lo, hi) in ((a.spearman, a.spearman_ci), (a.kendall, a.kendall_ci), (a.top_k_overlap, a.top_k_ci)):
        assert lo <= hi and lo - 0.05 <= value <= hi + 0.05
    assert 0.0 <= a.top_k_ci[0] <= a.top_k_ci[1] <= 1.0
    assert a.spearman_ci[1] - a.spearman_ci[0] > 0.05  # 25 noisy genomes do not pin rho down


def test_spearman_gap_paired_bootstrap():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=30)
    good, bad = ref + rng.normal(scale=0.2, size=30), rng.normal(size=30)
    gap, (lo, hi) = spearman_gap(good, bad, ref, n_boot=400)
    assert gap > 0.5 and 0 < lo <= gap <= hi
    same_gap, (lo2, hi2) = spearman_gap(good, good, ref, n_boot=100)
    assert same_gap == 0.0 and lo2 == hi2 == 0.0  # identical proxies: the paired bootstrap cancels exactly
    with pytest.raises(ValueError, match="equally long"):
        spearman_gap(good[:5], bad, ref)


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
    assert (rows["cpu_seconds"] > 0).all()  # process time: the cost, whatever else shares the cores
    for tokens, curve in zip(rows["tokens"], rows["curve"]):   # every training keeps its curve, to its last step
        points = json.loads(curve)
        assert points[-1][0] == tokens // (4 * 128) and all(np.isfinite(v) for _, v in points)
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


def test_run_jobs_extends_a_csv_from_before_cpu_seconds(tmp_path):
    from experiments.lib.jobs import RESULT_COLUMNS, training_time

    path = tmp_path / "old.csv"
    old = TrainJob(key="old", genome=TINY, tokens=512)
    pd.DataFrame([{"key": "old", "settings": old.settings, "genome_id": TINY.id, "tokens": 512, "seed": 0,
                   "loss": 5.0, "proxy_params": 1, "seconds": 9.0, "error": ""}],
                 columns=RESULT_COLUMNS).to_csv(path, index=False)
    rows = run_jobs([old, TrainJob(key="new", genome=TINY, tokens=512, proxy={"eval_batches": 1})], path, workers=1)
    assert sorted(rows["key"]) == ["new", "old"] and "cpu_seconds" not in rows
    seconds, clock = training_time(rows)
    assert clock == "wall" and seconds == pytest.approx(9.0 + float(rows.set_index("key").loc["new", "seconds"]))


def test_run_jobs_refuses_a_csv_without_settings_hashes(tmp_path):
    path = tmp_path / "before.csv"
    pd.DataFrame([{"key": "old", "genome_id": TINY.id, "tokens": 512, "seed": 0, "loss": 5.0, "proxy_params": 1,
                   "seconds": 9.0, "error": ""}]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="predates settings hashes"):
        run_jobs([TrainJob(key="old", genome=TINY, tokens=512)], path, workers=1)


def test_run_jobs_retrains_a_row_whose_proxy_default_changed(tmp_path, capsys):
    """The same key under another proxy setting (here a changed eval_batches, as a changed default would be) is a
    different result: the cached row is not reused."""
    path = tmp_path / "rows.csv"
    first = run_jobs([TrainJob(key="j", genome=TINY, tokens=512, proxy={"eval_batches": 1})], path, workers=1)
    capsys.readouterr()
    second = run_jobs([TrainJob(key="j", genome=TINY, tokens=512, proxy={"eval_batches": 2})], path, workers=1)
    assert "[1/1]" in capsys.readouterr().out  # trained, not read back
    assert len(pd.read_csv(path)) == 2 and len(first) == len(second) == 1
    assert first["settings"].iloc[0] != second["settings"].iloc[0]


def test_run_jobs_rejects_duplicate_keys(tmp_path):
    job = TrainJob(key="same", genome=TINY, tokens=512)
    with pytest.raises(ValueError, match="unique"):
        run_jobs([job, job], tmp_path / "rows.csv")


# ---- ladder trainings shared by ladder_fidelity and proxy_fidelity ------------------------------------------
def test_study_genomes_adds_each_reference_architecture_once():
    from experiments.lib.ladder import REFERENCE_ARCHITECTURES, study_genomes

    genomes = study_genomes("search_spaces/hybrid_1b.yaml", 5, seed=0,
                            extra=REFERENCE_ARCHITECTURES + ("search_spaces/reference/mamba2_ffn_1b.yaml",))
    kinds = [kind for _, kind in genomes]
    assert kinds[:5] == ["random"] * 5
    assert {"nemotron_flash_1b", "gated_deltanet_ffn_1b", "mamba2_ffn_1b", "attention_ffn_1b"} <= set(kinds)
    assert kinds.count("mamba2_ffn_1b") == 1  # a YAML seed named again in `extra` is not trained twice
    assert len({g.id for g, _ in genomes}) == len(genomes)


def test_run_ladders_continues_rungs_caches_and_keys_by_ladder(tmp_path, capsys):
    from experiments.lib.ladder import run_ladders

    path = tmp_path / "ladders.csv"
    proxy = {"eval_batches": 1}
    rows = run_ladders([(TINY, "tiny")], proxy, (1024, 2048), [0, 1], path, workers=2)
    assert sorted(rows["seed"]) == [0, 1] and set(rows["ladder"]) == {"1024-2048@cpu"}
    assert np.isfinite(rows[["loss0", "loss1"]].to_numpy()).all()
    assert (rows["loss1"] < rows["loss0"]).all()  # the second rung continued training: lower loss
    assert (rows["cpu1"] > 0).all()
    for curve in rows["curve"]:  # the top rung's curve holds the whole run, rung 0's steps included
        points = json.loads(curve)
        assert points[-1][0] == 2048 // (4 * 128) and all(np.isfinite(v) for _, v in points)
    capsys.readouterr()
    again = run_ladders([(TINY, "tiny")], proxy, (1024, 2048), [0, 1], path, workers=2)
    assert "0 to train" in capsys.readouterr().err
    assert sorted(again["loss1"]) == sorted(rows["loss1"])
    other = run_ladders([(TINY, "tiny")], proxy, (1024, 3072), [0], path, workers=1, train=False)
    assert other.empty  # another ladder's rows are not mistaken for this one's
    changed = run_ladders([(TINY, "tiny")], {"eval_batches": 2}, (1024, 2048), [0], path, workers=1, train=False)
    assert changed.empty  # nor another proxy setting's


def test_run_ladders_extends_a_cache_from_before_curves(tmp_path):
    from experiments.lib.ladder import CURVE, run_ladders

    path = tmp_path / "ladders.csv"
    run_ladders([(TINY, "tiny")], {"eval_batches": 1}, (1024, 2048), [0], path, workers=1)
    old = pd.read_csv(path).drop(columns=[CURVE])
    old.to_csv(path, index=False)
    rows = run_ladders([(TINY, "tiny")], {"eval_batches": 1}, (1024, 2048), [0, 1], path, workers=1)
    assert sorted(rows["seed"]) == [0, 1] and list(pd.read_csv(path).columns) == list(old.columns)
