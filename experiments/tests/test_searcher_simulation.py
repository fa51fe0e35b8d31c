"""The searcher benchmark's simulation and metrics (experiments/searcher_benchmark/run.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

import experiments.searcher_benchmark.run as sb
from experiments.lib.studies import settings_of
from experiments.lib.surrogate import observed_front


def args(**kw):
    base = dict(budget=30, workers=10, population=5, sample_size=2, target=10.0, noise=0.0)
    return dataclasses.replace(settings_of("searcher_benchmark"), **{**base, **kw})


def test_reported_best_is_the_true_loss_of_the_best_observed_feasible_point():
    # columns: true loss, observed loss, latency
    pts = np.array([[5.0, 4.0, 12.0],    # best observed, but over the target
                    [4.5, 4.9, 9.0],
                    [4.8, 4.6, 8.0],    # best observed under the target -> its TRUE loss is reported
                    [4.2, 5.5, 10.0]])
    assert sb.reported_best(pts, 4, 10.0) == 4.8
    assert sb.reported_best(pts, 2, 10.0) == 4.5
    assert math.isnan(sb.reported_best(pts, 1, 10.0))


def test_observed_front_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.normal(size=60), rng.normal(size=60), rng.uniform(1, 20, size=60)])
    front = observed_front(pts)
    for p in pts:
        dominated = any((q[1] <= p[1] and q[2] <= p[2]) and (q[1] < p[1] or q[2] < p[2]) for q in pts)
        assert dominated != any(np.array_equal(p, f) for f in front)


def test_noise_is_redrawn_per_evaluation_at_the_given_std():
    ev = sb.Surrogate()
    clean = sb.run_one("random", "pareto", 0, args(budget=60), ev)
    noisy = sb.run_one("random", "pareto", 0, args(budget=60, noise=0.25), ev)
    assert clean.shape == noisy.shape == (60, 3)
    np.testing.assert_array_equal(clean[:, 0], clean[:, 1])
    resid = noisy[:, 1] - noisy[:, 0]
    assert 0.18 < resid.std() < 0.33 and len(np.unique(resid)) == 60


def test_aging_in_target_mode_only_evaluates_feasible_candidates():
    pts = sb.run_one("aging", "target", 1, args(budget=25, population=5), sb.Surrogate())
    assert len(pts) == 25 and np.all(pts[:, 2] <= 10.0)
