"""The searcher benchmarks' surrogate objective (experiments/lib/surrogate.py): ridge fit, genome features, the
collected-evaluations loader, and collect_evaluations' genome sampler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flashsearch.genome import Genome

import experiments.collect_evaluations.run as ce
import experiments.lib.surrogate as sur


def test_ridge_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)) * np.array([1.0, 2.0, 0.5, 3.0, 1.0]) + np.array([0.0, 5.0, -1.0, 2.0, 0.0])
    w = np.array([0.5, -0.2, 1.5, 0.0, 0.3])
    y = 2.0 + X @ w + rng.normal(scale=0.01, size=400)
    m = sur.RidgeSurrogate(alpha=1e-6).fit(X, y)
    # standardized coefficients = raw coefficients x feature std
    np.testing.assert_allclose(m.coef_ / m.std_, w, atol=0.01)
    np.testing.assert_allclose(m.predict(X), y, atol=0.05)
    # a large penalty shrinks towards the mean
    big = sur.RidgeSurrogate(alpha=1e6).fit(X, y)
    assert np.abs(big.coef_).max() < 0.01
    assert abs(big.predict(X[:1])[0] - y.mean()) < 0.05


def test_cross_validate_ranks_a_learnable_target():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 4))
    y = X @ np.array([1.0, -0.5, 0.0, 0.2]) + rng.normal(scale=0.1, size=120)
    cv = sur.cross_validate(X, y, alpha=1.0, repeats=2)
    assert cv["spearman"] > 0.9 and cv["kendall"] > 0.75 and cv["rmse"] < 0.5 * cv["baseline_rmse"]


def test_genome_features_of_a_known_genome():
    # [attention, ffn, mamba2, ffn, deltanet, deltanet] at width 1024
    g = sur.SPACE.arch.genome(("attention", "ffn", "mamba2", "ffn", "deltanet", "deltanet"), 1024)
    f = dict(zip(sur.feature_names(), sur.genome_features(g)))
    assert len(f) == len(sur.genome_features(g))
    assert (f["n_attention"], f["n_mamba2"], f["n_deltanet"], f["n_ffn"]) == (1, 1, 2, 2)
    assert (f["third0_attention"], f["third0_ffn"]) == (1, 1)           # layers 0-1
    assert (f["third1_mamba2"], f["third1_ffn"]) == (1, 1)              # layers 2-3
    assert f["third2_deltanet"] == 2 and f["third2_ffn"] == 0           # layers 4-5
    assert f["d_model"] == 1024 and f["n_layers"] == 6
    expected = sum(sur.layer_params(op, g) for op in g.layer_types)
    assert f["log_params"] == pytest.approx(np.log10(expected))


def test_sampled_genomes_are_distinct_and_mixed():
    out = ce.sample_genomes(30, seed=3)
    ids = [sur.SPACE.decode(p).id for p, _ in out]
    assert len(set(ids)) == 30
    assert any(o == "sample" for _, o in out) and any(o.startswith("chain") for _, o in out)


def _row(g: Genome, loss: float = 4.5, tokens: int = 8192) -> dict:
    return {"genome_id": g.id, "genome_json": g.to_json(), "loss": loss, "latency": 10.0, "budget_tokens": tokens}


def test_load_evaluations_validates(tmp_path):
    g1 = sur.SPACE.arch.genome(("attention", "ffn"), 1024)
    g2 = sur.SPACE.arch.genome(("mamba2", "ffn"), 1280)
    good = tmp_path / "good.csv"
    pd.DataFrame([_row(g1), _row(g2, 4.7)]).to_csv(good, index=False)
    df = sur.load_evaluations(good)
    assert list(df["genome_id"]) == [g1.id, g2.id]
    X, y = sur.design(df)
    assert X.shape == (2, len(sur.feature_names())) and list(y) == [4.5, 4.7]

    cases = {
        "missing columns": pd.DataFrame([_row(g1)]).drop(columns=["latency"]),
        "non-finite": pd.DataFrame([_row(g1, float("nan"))]),
        "duplicate genome ids": pd.DataFrame([_row(g1), _row(g1)]),
        "mixed budgets": pd.DataFrame([_row(g1), _row(g2, tokens=4096)]),
        "does not match": pd.DataFrame([{**_row(g1), "genome_id": g2.id}]),
    }
    for message, frame in cases.items():
        path = tmp_path / "bad.csv"
        frame.to_csv(path, index=False)
        with pytest.raises(ValueError, match=message):
            sur.load_evaluations(path)


def test_committed_data_loads():
    df = sur.load_evaluations(sur.DATA_CSV)
    assert len(df) >= 150
