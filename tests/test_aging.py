"""Aging-evolution sampler: Algorithm 1's rules, read back from the study (no driver, no Ray)."""

import collections
import datetime as dt
import random
import shutil

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from flashsearch.genome import Genome
from flashsearch.search import attrs
from flashsearch.search.aging import AgingEvolutionSampler
from flashsearch.search.population import (Member, PopulationView, dominates, select_parent_constrained,
                                           select_parent_pareto)
from flashsearch.space import LayerwiseSpace, StagedSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

# max_operators high enough that repair never applies: mutations can be compared to the parent one-to-one.
UNREPAIRED = StagedSpace(max_operators=1000)
TINY = LayerwiseSpace(operators=("attention", "ffn"), widths=(64,), min_layers=2, max_layers=3)


def newest_population(trials, size):
    """Reference rule (independent of the sampler's incremental digest): the newest `size` COMPLETE trials by
    completion time, ties by number."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None and len(t.values) >= 2]
    done.sort(key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
    return done[-size:] if size > 0 else []


def toy_values(g: Genome) -> list[float]:
    loss = 3.0 - 0.03 * g.n_mixers - 0.0002 * g.d_model + 0.05 * g.count("attention")
    return [loss, toy_latency(g)]


def toy_latency(g: Genome) -> float:
    return g.n_layers * g.d_model / 1000.0


def study_with(sampler, storage=None) -> optuna.Study:
    return optuna.create_study(directions=["minimize", "minimize"], sampler=sampler, storage=storage)


def ask(study, space):
    """What the driver does at ask time: suggest all params, record the genome id."""
    trial = study.ask(fixed_distributions=space.distributions())
    genome = space.decode(space.repair(trial.params))
    trial.set_user_attr("genome_id", genome.id)
    return trial, genome


def step(study, space, values=toy_values):
    trial, genome = ask(study, space)
    return study.tell(trial, values(genome))


def sys_attrs(study, number):
    return study.get_trials(deepcopy=False)[number].system_attrs


# ---- pure selection rules -----------------------------------------------------------------------------------
def random_members(rng, n):
    return [Member(i, rng.uniform(2, 3), rng.uniform(1, 20)) for i in range(n)]


def test_constrained_parent_never_over_target_when_one_meets_it():
    rng = random.Random(0)
    for _ in range(500):
        members = random_members(rng, rng.randint(1, 12))
        target = rng.uniform(1, 20)
        parent = select_parent_constrained(members, target)
        feasible = [m for m in members if m.latency <= target]
        if feasible:
            assert parent.latency <= target
            assert parent.loss == min(m.loss for m in feasible)
        else:
            assert parent.latency == min(m.latency for m in members)


def test_pareto_parent_is_never_dominated_in_its_tournament():
    rng = random.Random(1)
    for _ in range(500):
        members = random_members(rng, rng.randint(1, 12))
        parent = select_parent_pareto(members, rng)
        assert not any(dominates(m, parent) for m in members)


def _frozen(number, loss, completed_at):
    t = create_trial(state=TrialState.COMPLETE, values=[loss, 1.0], params={}, distributions={})
    t.number = number
    t.datetime_complete = completed_at
    return t


def test_population_is_newest_by_completion_not_number():
    base = dt.datetime(2025, 1, 1)
    # trial 0 finished last (a slow worker); trial 3 finished first.
    finish = {0: 40, 1: 10, 2: 20, 3: 5, 4: 30}
    trials = [_frozen(n, 1.0, base + dt.timedelta(seconds=s)) for n, s in finish.items()]
    digest = PopulationView(storage=None)
    digest.update(trials, lambda t: None)
    assert [t.number for t in digest.newest(3)] == [2, 4, 0]
    # ties on completion time are ordered by number
    tied = [_frozen(n, 1.0, base) for n in range(4)]
    digest = PopulationView(storage=None)
    digest.update(tied, lambda t: None)
    assert [t.number for t in digest.newest(2)] == [2, 3]


# ---- the sampler on a study -----------------------------------------------------------------------------------
def test_random_until_population_is_full_counting_running_trials():
    space = StagedSpace()
    study = study_with(AgingEvolutionSampler(space, population=3, sample_size=2, seed=0))
    running = [ask(study, space)[0] for _ in range(3)]  # three workers start before anything finishes
    assert all(sys_attrs(study, t.number)[attrs.AGING_ORIGIN] == "random" for t in running)
    for t in running:
        study.tell(t, [2.0, 10.0])
    step(study, space)
    assert sys_attrs(study, 3)[attrs.AGING_ORIGIN] == "mutation"


def test_running_trials_fill_the_population_so_workers_do_not_over_seed():
    space = StagedSpace()
    study = study_with(AgingEvolutionSampler(space, population=3, sample_size=2, seed=0))
    step(study, space)
    step(study, space)
    ask(study, space)  # 2 complete + 1 running = population is full
    ask(study, space)
    got = sys_attrs(study, 3)
    assert got[attrs.AGING_ORIGIN] == "mutation" and got[attrs.AGING_PARENT] in (0, 1)


def test_oldest_members_age_out_even_when_best():
    space = StagedSpace()
    study = study_with(AgingEvolutionSampler(space, population=3, sample_size=3, seed=0, target_latency=1e9))
    for i in range(6):
        # Trials 0 and 1 are by far the best but are the oldest: with P=3 they have aged out.
        step(study, space, values=lambda g, i=i: [1.0 if i < 2 else 3.0 - 0.1 * i, 5.0])
    for _ in range(10):
        trial, _ = ask(study, space)
        assert sys_attrs(study, trial.number)[attrs.AGING_PARENT] == 5  # newest 3 = {3,4,5}; 5 has the lowest loss
        study.tell(trial, state=TrialState.FAIL)  # failed trials do not enter the population


def test_constrained_parent_respects_target_through_study():
    space = StagedSpace()
    target = 30.0
    study = study_with(AgingEvolutionSampler(space, population=8, sample_size=8, seed=3, target_latency=target))
    for _ in range(40):
        step(study, space)
    done = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    for t in done.values():
        if t.system_attrs.get(attrs.AGING_ORIGIN) != "mutation":
            continue
        pop = newest_population([d for d in done.values() if d.datetime_complete < t.datetime_start], 8)
        feasible = [p for p in pop if p.values[1] <= target]
        parent = done[t.system_attrs[attrs.AGING_PARENT]]
        if feasible:
            assert parent.values[1] <= target
            assert parent.values[0] == min(p.values[0] for p in feasible)


def test_pareto_parent_is_non_dominated_in_population_through_study():
    space = StagedSpace()
    study = study_with(AgingEvolutionSampler(space, population=6, sample_size=6, seed=4))
    for _ in range(30):
        step(study, space)
    done = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    checked = 0
    for t in done.values():
        if t.system_attrs.get(attrs.AGING_ORIGIN) != "mutation":
            continue
        pop = newest_population([d for d in done.values() if d.datetime_complete < t.datetime_start], 6)
        parent = done[t.system_attrs[attrs.AGING_PARENT]]
        assert parent in pop
        pv = parent.values
        assert not any(p.values[0] <= pv[0] and p.values[1] <= pv[1] and p.values != pv for p in pop)
        checked += 1
    assert checked >= 20


def test_child_differs_from_parent_in_exactly_the_recorded_factor():
    space = UNREPAIRED
    study = study_with(AgingEvolutionSampler(space, population=5, sample_size=3, seed=5))  # Pareto: width mutates
    for _ in range(40):
        step(study, space)
    trials = study.get_trials()
    mutated = [t for t in trials if t.system_attrs.get(attrs.AGING_ORIGIN) == "mutation"]
    assert len(mutated) >= 30
    factors = set()
    for t in mutated:
        parent = trials[t.system_attrs[attrs.AGING_PARENT]]
        diff = [k for k in t.params if t.params[k] != parent.params[k]]
        assert diff == [t.system_attrs[attrs.AGING_MUTATION]]
        factors.add(diff[0])
    assert "d_model" in factors or len(factors) > 3


def test_constrained_mode_solves_width_instead_of_mutating_it():
    space = UNREPAIRED
    target = 25.0
    sampler = AgingEvolutionSampler(space, population=5, sample_size=3, seed=6, target_latency=target,
                                    latency_fn=toy_latency)
    study = study_with(sampler)
    for _ in range(30):
        step(study, space)
    trials = study.get_trials()
    for t in trials:
        if t.system_attrs.get(attrs.AGING_ORIGIN) != "mutation":
            continue
        assert t.system_attrs[attrs.AGING_MUTATION] != "d_model"
        parent = trials[t.system_attrs[attrs.AGING_PARENT]]
        diff = {k for k in t.params if t.params[k] != parent.params[k]}
        assert diff - {"d_model"} == {t.system_attrs[attrs.AGING_MUTATION]}
        widths = sorted(space.widths)
        w = t.params["d_model"]
        assert toy_latency(space.decode(t.params)) <= target  # infeasible children are never proposed
        if w != widths[-1]:
            bigger = space.with_width(t.params, widths[widths.index(w) + 1])
            assert toy_latency(space.decode(bigger)) > target  # the largest width that meets it


def test_stateless_a_fresh_sampler_on_the_same_storage_makes_the_same_choice(tmp_path):
    space = StagedSpace()
    log = tmp_path / "study.log"

    def storage(path):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))

    study = optuna.create_study(directions=["minimize", "minimize"], storage=storage(log), study_name="s",
                                sampler=AgingEvolutionSampler(space, population=4, sample_size=2, seed=11))
    for _ in range(9):
        step(study, space)
    shutil.copy(log, tmp_path / "copy.log")
    # The "crashed" controller's own sampler continues on one copy; a new process's new sampler on the other.
    t_old, _ = ask(study, space)
    resumed = optuna.load_study(study_name="s", storage=storage(tmp_path / "copy.log"),
                                sampler=AgingEvolutionSampler(space, population=4, sample_size=2, seed=11))
    t_new, _ = ask(resumed, space)
    assert t_new.number == t_old.number
    assert t_new.params == t_old.params
    a, b = sys_attrs(study, t_old.number), sys_attrs(resumed, t_new.number)
    assert (a[attrs.AGING_ORIGIN], a.get(attrs.AGING_PARENT), a.get(attrs.AGING_MUTATION)) == \
           (b[attrs.AGING_ORIGIN], b.get(attrs.AGING_PARENT), b.get(attrs.AGING_MUTATION))


def test_no_genome_is_proposed_twice_while_new_ones_exist():
    space = TINY  # 10 distinct genomes in all
    study = study_with(AgingEvolutionSampler(space, population=3, sample_size=2, seed=0))
    ids = [space.decode(space.repair(step(study, space).params)).id for _ in range(10)]
    assert len(set(ids)) == 10
    # Space exhausted: the sampler still proposes something (the driver replays the cached result).
    step(study, space)


def test_in_flight_genomes_are_not_proposed_again():
    space = TINY
    study = study_with(AgingEvolutionSampler(space, population=2, sample_size=2, seed=1))
    step(study, space)
    step(study, space)
    in_flight = [ask(study, space)[1].id for _ in range(5)]  # five workers, nothing told yet
    assert len(set(in_flight)) == 5


def test_enqueued_trials_keep_their_params():
    space = StagedSpace()
    study = study_with(AgingEvolutionSampler(space, population=2, sample_size=2, seed=0))
    seed = space.sample(random.Random(9))
    study.enqueue_trial(seed)
    trial, _ = ask(study, space)
    assert trial.params == seed
    assert attrs.AGING_ORIGIN not in sys_attrs(study, trial.number)


def test_sample_independent_falls_back_to_random():
    space = StagedSpace()
    study = study_with(AgingEvolutionSampler(space, population=2, sample_size=2, seed=0))
    trial = study.ask()
    value = trial.suggest_categorical("not_in_space", ["x", "y"])
    assert value in ("x", "y")
    assert isinstance(study.sampler.infer_relative_search_space(study, study.trials[0]), dict)


@pytest.mark.parametrize("kwargs", [dict(population=0, sample_size=1), dict(population=3, sample_size=4),
                                    dict(population=3, sample_size=2, target_latency=-1.0)])
def test_bad_settings_are_user_errors(kwargs):
    from flashsearch.errors import FlashsearchError

    with pytest.raises(FlashsearchError):
        AgingEvolutionSampler(StagedSpace(), **kwargs)


def test_distributions_are_categorical_or_int():
    for name, d in StagedSpace().distributions().items():
        assert isinstance(d, (CategoricalDistribution, optuna.distributions.IntDistribution)), name


def test_cached_digest_decides_like_a_fresh_sampler_every_call():
    """The sampler caches what finished trials say; a fresh instance per ask must make identical choices,
    also with trials in flight and finishing out of order (several workers)."""
    space = StagedSpace()

    def run(fresh_each_time: bool) -> list[dict]:
        make = lambda: AgingEvolutionSampler(space, population=5, sample_size=3, seed=21, target_latency=30.0,
                                             latency_fn=toy_latency)
        study = study_with(make())
        in_flight = []
        for i in range(40):
            if fresh_each_time:
                study.sampler = make()
            in_flight.append(ask(study, space))
            if len(in_flight) == 3:  # three workers: the middle one finishes first, then the oldest
                for trial, genome in (in_flight.pop(1), in_flight.pop(0)):
                    if i % 7 == 0:
                        study.tell(trial, state=TrialState.FAIL)
                    else:
                        study.tell(trial, toy_values(genome))
        return [t.params for t in study.trials]

    assert run(fresh_each_time=False) == run(fresh_each_time=True)


def test_digest_matches_a_full_recompute():
    """White-box: the incremental digest equals the from-scratch definitions after every ask."""
    space = StagedSpace()
    sampler = AgingEvolutionSampler(space, population=5, sample_size=3, seed=2)
    study = study_with(sampler)
    study.enqueue_trial(space.sample(random.Random(0)))
    in_flight = []
    for i in range(40):
        in_flight.append(ask(study, space))
        if len(in_flight) == 3:
            for trial, genome in (in_flight.pop(1), in_flight.pop(0)):
                study.tell(trial, state=TrialState.FAIL) if i % 7 == 0 else study.tell(trial, toy_values(genome))
        digest = sampler._view(study)
        trials = study.get_trials()
        assert [t.number for t in digest.newest(5)] == [t.number for t in newest_population(trials, 5)]
        assert digest.n_alive_finished + len(digest.open) == sum(t.state != TrialState.FAIL for t in trials)
        ids = digest.finished_ids | {sampler._genome_id(t) for t in digest.open_trials()}
        assert ids == {t.user_attrs["genome_id"] for t in trials}


def test_pareto_selection_chooses_interior_front_members():
    """A tournament holding a whole 5-point front: crowding inside the tournament always picked one of the two
    endpoints (infinite crowding); the population's front must be covered, interior members included."""
    front = [Member(0, 1.0, 9.0), Member(1, 1.5, 5.0), Member(2, 2.0, 3.0), Member(3, 3.0, 1.5), Member(4, 4.0, 1.0)]
    dominated = Member(5, 3.5, 9.5)
    rng = random.Random(0)
    picks = collections.Counter(select_parent_pareto(front + [dominated], rng).number for _ in range(4000))
    assert 5 not in picks
    for interior in (1, 2, 3):
        assert picks[interior] > 0.08 * 4000, picks
    assert picks[0] > 0 and picks[4] > 0


def test_pareto_selection_normalises_over_the_population_not_the_tournament():
    """Two tournament members; whether the faster one wins depends on the weight and on the population's ranges:
    with latency spanning 100x more than loss in the population, a latency gap of 1 s is small."""
    a, b = Member(0, 1.0, 2.0), Member(1, 1.1, 1.0)
    population = [a, b, Member(2, 0.9, 100.0), Member(3, 2.0, 0.5)]
    rng = random.Random(0)
    share_b = sum(select_parent_pareto([a, b], rng, population).number == 1 for _ in range(2000)) / 2000
    rng = random.Random(0)
    share_b_alone = sum(select_parent_pareto([a, b], rng).number == 1 for _ in range(2000)) / 2000
    assert share_b < 0.2 < 0.4 < share_b_alone
