"""The aging-evolution sampler against Optuna's own sampler contract (optuna.testing.pytest_samplers).

Run as published:
- BasicSamplerTestCase: parameters outside our space, NaN objectives, PartialFixedSampler, conditional and dynamic
  ranges, every distribution type, single-objective studies.
- MultiObjectiveSamplerTestCase: independent sampling under (minimize, maximize).

Not applicable, re-expressed below in the space the sampler owns:
- RelativeSamplerTestCase's three sample_relative cases hand the sampler a relative search space of their own
  (x, y) and expect it to propose values for it. Aging evolution's relative space is its SearchSpace, the only
  thing it can mutate; for any other parameter it returns nothing and Optuna falls back to sample_independent
  (which the Basic cases cover). The same properties (values inside their distributions, plain Python types,
  only what was asked for) are checked on the space's own distributions.
- RelativeSamplerTestCase.test_trial_relative_params (n_jobs 1 and 2) runs as published, its objective over the
  sampler's own parameters.
- SingleOnlySamplerTestCase is for samplers that refuse multi-objective studies; aging evolution is multi-objective.
"""

from __future__ import annotations

import pickle
import threading
import warnings
from functools import partial

import optuna
import pytest
from optuna.samplers import PartialFixedSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase, MultiObjectiveSamplerTestCase
from optuna.trial import Trial, TrialState

from flashsearch.search import attrs
from flashsearch.search.aging import AgingEvolutionSampler
from flashsearch.search.latency_target import predicted_seconds
from flashsearch.space import StagedSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = StagedSpace(widths=(256, 512, 768), max_blocks_per_stage=2, max_operators=12)


def aging(**kw) -> AgingEvolutionSampler:
    return AgingEvolutionSampler(SPACE, population=4, sample_size=2, seed=0, **kw)


class TestBasicContract(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return aging


class TestMultiObjectiveContract(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return aging


def toy_objectives(trial: Trial) -> tuple[float, float]:
    """Two objectives of the space's own parameters (ask for every one of them, as the driver does)."""
    params = {name: trial._suggest(name, dist) for name, dist in SPACE.distributions().items()}
    g = SPACE.decode(SPACE.repair(params))
    return 3.0 - 0.03 * g.n_mixers - 0.0004 * g.d_model + 0.05 * g.count("attention"), g.n_layers * g.d_model / 1e3


# ---- RelativeSamplerTestCase, in the sampler's own space -------------------------------------------------------
def test_sample_relative_values_lie_in_their_distributions_as_python_types():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=aging())
    study.optimize(toy_objectives, n_trials=8)  # past the random start: these are mutations
    dists = SPACE.distributions()
    for _ in range(5):
        trial = study.ask()
        params = study.sampler.sample_relative(study, study._storage.get_trial(trial._trial_id), dists)
        assert set(params) == set(dists)
        for name, value in params.items():
            assert dists[name]._contains(dists[name].to_internal_repr(value)), name
            assert type(value).__module__ == "builtins", (name, type(value))
        study.tell(trial, state=TrialState.FAIL)


def test_sample_relative_returns_only_the_search_space_it_is_given():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=aging())
    study.optimize(toy_objectives, n_trials=6)
    subset = dict(list(SPACE.distributions().items())[:3])
    trial = study.ask()
    params = study.sampler.sample_relative(study, study._storage.get_trial(trial._trial_id), subset)
    assert set(params) == set(subset)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_trial_relative_params(n_jobs):
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=aging())

    def objective(trial: Trial) -> tuple[float, float]:
        assert trial._relative_params is None
        values = toy_objectives(trial)
        assert trial._relative_params is not None
        return values

    study.optimize(objective, n_trials=10, n_jobs=n_jobs)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 10


# ---- what an Optuna user does with it ----------------------------------------------------------------------------
def test_independent_parameters_get_independent_streams():
    study = optuna.create_study(sampler=aging())

    def objective(trial: Trial) -> float:
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        return x + y

    study.optimize(objective, n_trials=12)
    assert all(t.params["x"] != t.params["y"] for t in study.trials)


def test_partial_fixed_sampler_over_the_space_fixes_one_gene_and_evolves_the_rest():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=aging())
    study.optimize(toy_objectives, n_trials=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = PartialFixedSampler({"d_model": 768}, study.sampler)
    study.optimize(toy_objectives, n_trials=6)
    fixed = study.trials[6:]
    assert all(t.params["d_model"] == 768 for t in fixed)
    assert any(t.system_attrs.get(attrs.AGING_ORIGIN) == "mutation" for t in fixed)
    assert len({tuple(sorted(t.params.items())) for t in fixed}) > 1  # the rest still varies


def test_an_enqueued_partial_trial_gets_varied_values_for_the_rest():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=aging())
    for _ in range(6):
        study.enqueue_trial({"d_model": 512})
    study.optimize(toy_objectives, n_trials=6)
    assert all(t.params["d_model"] == 512 for t in study.trials)
    others = [tuple(v for k, v in sorted(t.params.items()) if k != "d_model") for t in study.trials]
    assert len(set(others)) > 1


def test_n_jobs_does_not_count_trials_twice():
    sampler = aging()
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(toy_objectives, n_trials=24, n_jobs=4)
    with sampler._lock:
        view = sampler._view(study)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert view.n_alive_finished == len(complete) == 24
    assert len(view.complete) == 24 and len({t.number for _, _, t in view.complete}) == 24


def test_directions_are_honoured():
    """Maximizing the loss must pick the tournament's worst-loss member as parent, minimizing its best."""
    def parents(directions):
        study = optuna.create_study(directions=directions, sampler=aging())
        study.optimize(toy_objectives, n_trials=14)
        done = {t.number: t for t in study.trials}
        out = []
        for t in study.trials:
            parent = t.system_attrs.get(attrs.AGING_PARENT)
            if t.system_attrs.get(attrs.AGING_ORIGIN) == "mutation":
                out.append(done[parent].values[0])
        return out

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(parents(["maximize", "minimize"])) > mean(parents(["minimize", "minimize"]))


def test_single_objective_is_regularized_evolution():
    study = optuna.create_study(sampler=aging())
    study.optimize(lambda t: toy_objectives(t)[0], n_trials=12)
    origins = [t.system_attrs.get(attrs.AGING_ORIGIN) for t in study.trials]
    assert "mutation" in origins
    for t in study.trials:
        if t.system_attrs.get(attrs.AGING_ORIGIN) == "mutation":
            assert study.trials[t.system_attrs[attrs.AGING_PARENT]].state == TrialState.COMPLETE


def test_studies_it_cannot_serve_are_refused_clearly():
    three = optuna.create_study(directions=["minimize"] * 3, sampler=aging())
    with pytest.raises(ValueError, match="one objective .* or two"):
        three.optimize(lambda t: (*toy_objectives(t), 0.0), n_trials=1, catch=())
    target = optuna.create_study(directions=["minimize", "maximize"], sampler=aging(target_latency=1.0,
                                                                                   latency_fn=lambda g: 0.5))
    with pytest.raises(ValueError, match="latency-target mode needs"):
        target.optimize(toy_objectives, n_trials=1, catch=())


def test_foreign_trials_are_skipped_not_fatal():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=aging())
    for i in range(6):  # complete trials of another space, e.g. written by another sampler
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.1 * (i + 1)},
                                                  distributions={"lr": optuna.distributions.FloatDistribution(0, 1)},
                                                  values=[1.0, 1.0]))
    study.optimize(toy_objectives, n_trials=8)
    ours = study.trials[6:]
    assert all(t.state == TrialState.COMPLETE for t in ours)
    parents = [t.system_attrs[attrs.AGING_PARENT] for t in ours if attrs.AGING_PARENT in t.system_attrs]
    assert all(p >= 6 for p in parents)


class FixedPredictor:
    def predict(self, genome, workload) -> float:
        return genome.d_model / 1000.0


@pytest.mark.parametrize("target", [None, 0.6])
def test_the_sampler_pickles_in_both_modes_and_decides_the_same_after(target):
    latency = partial(predicted_seconds, FixedPredictor(), None)
    sampler = aging(target_latency=target, latency_fn=latency if target else None)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(toy_objectives, n_trials=8)
    clone = pickle.loads(pickle.dumps(sampler))
    assert isinstance(clone._lock, type(threading.Lock()))
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    dists = SPACE.distributions()
    assert clone.sample_relative(study, frozen, dists) == aging(
        target_latency=target, latency_fn=latency if target else None).sample_relative(study, frozen, dists)
