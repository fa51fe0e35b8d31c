"""Aging evolution's children_per_ask option: K mutated children, the one a ridge fitted to the study predicts best."""

import numpy as np
import optuna
import pytest

from flashsearch.errors import FlashsearchError
from flashsearch.search import attrs as names
from flashsearch.search.aging import AgingEvolutionSampler
from flashsearch.search.child_ranker import MIN_TRAIN, genome_features, pick_child, ridge_predict
from flashsearch.space import StagedSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = StagedSpace(max_operators=1000)  # no repair: a child differs from its parent in one factor


def toy_loss(g) -> float:
    """Linear in the screening features (mixer counts, width), so a good screen must find the best child."""
    return 3.0 - 0.03 * g.n_mixers - 0.0004 * g.d_model + 0.08 * g.count("attention")


def toy_latency(g) -> float:
    return g.n_layers * g.d_model / 1000.0


def ask(study):
    trial = study.ask(fixed_distributions=SPACE.distributions())
    genome = SPACE.decode(SPACE.repair(trial.params))
    trial.set_user_attr("genome_id", genome.id)
    return trial, genome


def completed_trials(n: int, seed: int = 0):
    """n completed random trials (population = n, so plain aging never leaves its random phase)."""
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=AgingEvolutionSampler(SPACE, population=n, sample_size=2, seed=seed))
    for _ in range(n):
        trial, g = ask(study)
        study.tell(trial, [toy_loss(g), toy_latency(g)])
    return study.get_trials()


def child_of(trials, k: int, seed: int, target=None):
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=AgingEvolutionSampler(
        SPACE, population=len(trials), sample_size=5, seed=seed, children_per_ask=k, target_latency=target,
        latency_fn=toy_latency))
    study.add_trials(trials)
    trial, g = ask(study)
    return study, trial, g


def test_ridge_recovers_a_linear_function():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5)) * [1, 10, 100, 0.1, 3]
    w = np.array([0.5, -0.02, 0.003, 4.0, 0.0])
    X_new = rng.normal(size=(7, 5)) * [1, 10, 100, 0.1, 3]
    np.testing.assert_allclose(ridge_predict(X, X @ w + 2.0, X_new, alpha=1e-6), X_new @ w + 2.0, atol=1e-4)


def test_screened_child_beats_the_plain_child():
    """Same study, same seed: K=1 trains the first mutation, K=8 the best-predicted of 8 (the first among them).
    On a landscape the screen can model, the screened children must be clearly better on average."""
    trials = completed_trials(30)
    plain, screened = [], []
    for seed in range(25):
        plain.append(toy_loss(child_of(trials, 1, seed)[2]))
        screened.append(toy_loss(child_of(trials, 8, seed)[2]))
    assert np.mean(screened) < np.mean(plain) - 0.03
    assert sum(s < p - 1e-12 for s, p in zip(screened, plain)) >= 10  # (14 of 25 when written)


def test_screened_child_is_still_one_mutation_of_a_tournament_member_and_meets_the_target():
    trials = completed_trials(30)
    target = 45.0  # about a third of the random trials meet it
    for seed in range(6):
        study, trial, g = child_of(trials, 8, seed, target=target)
        attrs = study.get_trials()[trial.number].system_attrs
        assert attrs[names.AGING_ORIGIN] == "mutation"
        parent = trials[attrs[names.AGING_PARENT]]
        params = study.get_trials()[trial.number].params
        assert {k for k in params if params[k] != parent.params[k]} - {"d_model"} == {attrs[names.AGING_MUTATION]}
        assert toy_latency(g) <= target


def test_one_child_per_ask_is_plain_aging():
    trials = completed_trials(30)
    for seed in range(5):
        default = AgingEvolutionSampler(SPACE, population=30, sample_size=5, seed=seed)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=default)
        study.add_trials(trials)
        assert ask(study)[0].params == child_of(trials, 1, seed)[1].params


def test_pareto_screen_follows_the_weight():
    """Children: one low-loss/slow, one high-loss/fast; w near 1 weighs loss, near 0 latency."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(MIN_TRAIN + 10, 3))
    loss, lat = X[:, 0] + 5.0, np.exp(X[:, 1])
    children = [np.array([-2.0, 2.0, 0.0]), np.array([2.0, -2.0, 0.0])]
    assert pick_child(children, list(X), loss, lat, weight=0.99) == 0
    assert pick_child(children, list(X), loss, lat, weight=0.01) == 1
    assert pick_child(children, list(X), loss, lat, child_latencies=[0.1, 50.0], weight=0.01) == 0
    assert pick_child(children, list(X[:MIN_TRAIN - 1]), loss[:MIN_TRAIN - 1], weight=None) == 0  # too few


def test_features_count_operators_by_half():
    g = SPACE.decode(SPACE.sample(__import__("random").Random(3)))
    ops = ("attention", "mamba2", "deltanet", "ffn")
    f = genome_features(g, ops)
    assert f[:4].sum() == g.n_layers
    assert f[4:8].sum() == g.n_layers // 2
    assert f[8] == g.d_model and f[9] == g.n_layers


def test_bad_children_per_ask_is_a_user_error():
    with pytest.raises(FlashsearchError, match="children_per_ask"):
        AgingEvolutionSampler(SPACE, population=4, sample_size=2, children_per_ask=0)


def test_config_key_reaches_the_sampler_and_is_validated():
    from pathlib import Path

    from flashsearch.config import load_config
    from flashsearch.search.samplers import build_sampler

    hybrid = Path(__file__).resolve().parents[1] / "search_spaces" / "hybrid_1b.yaml"
    cfg = load_config(hybrid, ["search.children_per_ask=6"])
    assert build_sampler(cfg, SPACE).children_per_ask == 6
    assert build_sampler(load_config(hybrid), SPACE).children_per_ask == 1
    with pytest.raises(FlashsearchError, match="search.children_per_ask must be positive"):
        load_config(hybrid, ["search.children_per_ask=0"])
