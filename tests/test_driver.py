"""Search driver: ask/evaluate/tell with W in flight, failures, dedup, seeds, resume. In-process workers
(ray_address="local") except one test through a real local Ray."""

import io
import math
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from factories import run_config
from flashsearch.search.recovery import enqueue_seeds
from flashsearch.search.driver import Hooks
from flashsearch.errors import FlashsearchError, TrialFailed
from flashsearch.genome import Genome
from flashsearch.progress import Progress, SearchEvent
from flashsearch.search import AgingEvolutionSampler, run_search
from flashsearch.search import attrs
from flashsearch.search.recovery import INTERRUPTED
from flashsearch.search.results import jsonable
from flashsearch.space import LayerwiseSpace, StagedSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = StagedSpace()


def toy_eval(genome_json: str) -> dict:
    g = Genome.from_json(genome_json)
    loss = 3.0 - 0.03 * g.n_mixers - 0.0002 * g.d_model + 0.05 * g.count("attention")
    return {"loss": loss, "latency": g.n_layers * g.d_model / 1000.0, "latency_source": "toy",
            "proxy_params": 1234, "curve": [(1, 3.5), (2, 3.1)], "metric": "val_bpb"}


class Counting:
    """Evaluator that records which genomes it was asked to evaluate (thread-safe)."""

    def __init__(self, fn=toy_eval):
        self.fn = fn
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, genome_json: str) -> dict:
        with self.lock:
            self.calls.append(Genome.from_json(genome_json).id)
        return self.fn(genome_json)


def make_study(storage=None, seed=0, **kw) -> optuna.Study:
    sampler = AgingEvolutionSampler(SPACE, population=4, sample_size=2, seed=seed, **kw)
    return optuna.create_study(directions=["minimize", "minimize"], sampler=sampler, storage=storage,
                               study_name="s" if storage else None)


def journal(path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def states(study):
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_completes_exactly_n_trials_with_attributes():
    study = make_study()
    events: list[SearchEvent] = []
    summary = run_search(study, SPACE, toy_eval, run_config(12, 3), Hooks(progress=events.append))
    assert states(study) == {"COMPLETE": 12}
    assert summary.ok and summary.complete == 12 and summary.failed == 0
    assert summary.evaluated + summary.cached == 12
    for t in study.trials:
        g = Genome.from_json(t.user_attrs["genome"])
        assert t.user_attrs["genome_id"] == g.id
        assert t.user_attrs["latency_source"] == "toy"
        assert t.user_attrs["metrics"]["proxy_params"] == 1234
        assert t.user_attrs["metrics"]["curve"] == [[1, 3.5], [2, 3.1]]
        assert t.user_attrs["eval_seconds"] >= 0
        assert t.values == pytest.approx([toy_eval(g.to_json())["loss"], toy_eval(g.to_json())["latency"]])
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("trial_done") + kinds.count("trial_cached") == 12
    assert max(e.running for e in events) <= 3
    best = min((t.values[0], t.values[1], t.number) for t in study.trials)
    assert (summary.best_loss, summary.best_number) == (best[0], best[2])


def test_failed_evaluations_are_recorded_and_the_search_goes_on():
    def flaky(genome_json):
        g = Genome.from_json(genome_json)
        if g.layer_types[0] == "attention":
            raise TrialFailed("loss diverged (nan) at step 12")
        if g.layer_types[0] == "mamba2":
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
        return toy_eval(genome_json)

    study = make_study(seed=1)
    summary = run_search(study, SPACE, flaky, run_config(10, 2))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert states(study)["COMPLETE"] == 10
    assert failed and summary.failed == len(failed)
    reasons = {t.user_attrs["error"] for t in failed}
    assert reasons <= {"loss diverged (nan) at step 12", "out of memory: RuntimeError: CUDA out of memory."}
    for t in failed:
        assert "\n" not in t.user_attrs["error"]
        assert t.values is None
        if t.user_attrs["error"].startswith("out of memory"):
            assert t.user_attrs["error_kind"] == "oom"
            assert "Traceback" in t.user_attrs["error_detail"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "abc"])
def test_non_finite_results_fail_the_trial(bad):
    def broken(genome_json):
        return {**toy_eval(genome_json), "loss": bad}

    study = make_study()
    summary = run_search(study, SPACE, broken, run_config(2, 1, max_failures=3))
    assert summary.stopped == "max_failures" and summary.failed == 4
    assert states(study) == {"FAIL": 4}
    assert all("loss" in t.user_attrs["error"] for t in study.trials)


def test_missing_result_keys_fail_the_trial():
    study = make_study()
    run_search(study, SPACE, lambda gj: {"loss": 1.0}, run_config(1, 1, max_failures=0))
    assert study.trials[0].user_attrs["error"] == "evaluator result lacks latency, latency_source"


def test_stops_early_after_max_failures_and_cancels_in_flight():
    def always_fails(genome_json):
        raise TrialFailed("no")

    study = make_study()
    summary = run_search(study, SPACE, always_fails, run_config(50, 2, max_failures=3))
    assert summary.stopped == "max_failures" and not summary.ok
    assert summary.failed == 4
    assert "stopped early after 4 failures (last: no)" in summary.line()
    assert states(study).get("RUNNING", 0) == 0


def test_identical_genomes_are_evaluated_once_and_replays_are_no_new_trials():
    ev = Counting()
    study = make_study()
    p = SPACE.sample(__import__("random").Random(0))
    enqueue_seeds(study, [p, p], SPACE)
    summary = run_search(study, SPACE, ev, run_config(2, 1))
    first, second = study.trials[:2]
    assert second.user_attrs["cached_from"] == first.number
    assert second.values == first.values
    assert second.user_attrs["latency_source"] == "toy"
    assert ev.calls.count(first.user_attrs["genome_id"]) == 1
    # The replay is recorded but is no new trial: two evaluated trials were asked for, two were evaluated.
    assert summary.cached == 1 and summary.evaluated == 2 and summary.complete == 2
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3 and sum("cached_from" not in t.user_attrs for t in done) == 2


def test_replays_do_not_join_the_aging_population():
    space = SPACE
    sampler = AgingEvolutionSampler(space, population=2, sample_size=2, seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    rng = __import__("random").Random(3)
    a, b = space.sample(rng), space.sample(rng)
    enqueue_seeds(study, [a, b, a], space)
    run_search(study, space, toy_eval, run_config(3, 1))
    replay = [t.number for t in study.trials if "cached_from" in t.user_attrs]
    assert replay == [2] and [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert [t.number for t in sampler._view(study).newest(2)] == [1, 3]  # the replay (#2) is no member


def test_a_space_with_nothing_new_stops_as_exhausted():
    tiny = LayerwiseSpace(operators=("attention", "ffn"), widths=(64,), min_layers=2, max_layers=2)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    summary = run_search(study, tiny, toy_eval, run_config(50, 1))
    distinct = {t.user_attrs["genome_id"] for t in study.trials}
    assert summary.stopped == "exhausted" and summary.complete == summary.evaluated == len(distinct) < 50
    assert "space looks exhausted" in summary.line()


def test_seeds_are_enqueued_once_per_study(tmp_path):
    rng = __import__("random").Random(1)
    seeds = [SPACE.sample(rng) for _ in range(2)]
    study = make_study(storage=journal(tmp_path / "s.log"))
    enqueue_seeds(study, seeds, SPACE)
    run_search(study, SPACE, toy_eval, run_config(3, 1))
    assert [t.params for t in study.trials[:2]] == seeds
    resumed = optuna.load_study(study_name="s", storage=journal(tmp_path / "s.log"),
                                sampler=AgingEvolutionSampler(SPACE, population=4, sample_size=2, seed=0))
    enqueue_seeds(resumed, seeds, SPACE)
    run_search(resumed, SPACE, toy_eval, run_config(6, 1))
    assert states(resumed) == {"COMPLETE": 6}
    assert sum("seed" in t.user_attrs for t in resumed.trials) == 2
    assert resumed.user_attrs[attrs.SEEDS_ENQUEUED] == 2


def test_bad_seed_is_a_user_error_and_nothing_is_enqueued():
    study = make_study()
    good = SPACE.sample(__import__("random").Random(2))
    with pytest.raises(FlashsearchError, match="seed 1"):
        enqueue_seeds(study, [good, {**good, "d_model": 7}], SPACE)
        run_search(study, SPACE, toy_eval, run_config(1, 1))
    assert study.trials == []


def test_resume_reruns_trials_orphaned_by_a_crash(tmp_path):
    storage = journal(tmp_path / "s.log")
    study = make_study(storage=storage)
    run_search(study, SPACE, toy_eval, run_config(3, 1))
    # Simulate a controller killed with two trials in flight.
    orphans = [study.ask(fixed_distributions=SPACE.distributions()) for _ in range(2)]
    orphan_params = [dict(t.params) for t in orphans]
    del study

    ev = Counting()
    resumed = optuna.load_study(study_name="s", storage=journal(tmp_path / "s.log"),
                                sampler=AgingEvolutionSampler(SPACE, population=4, sample_size=2, seed=0))
    summary = run_search(resumed, SPACE, ev, run_config(6, 2))
    assert summary.recovered == 2
    trials = resumed.trials
    assert states(resumed) == {"COMPLETE": 6, "FAIL": 2}
    for t, params in zip(orphans, orphan_params):
        old = trials[t.number]
        assert old.state == TrialState.FAIL and old.user_attrs["error"] == INTERRUPTED
        retry = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        assert len(retry) == 1 and retry[0].params == params and retry[0].state == TrialState.COMPLETE
    # The retries ran first (they were queued), and a second resume has nothing to do.
    assert summary.evaluated + summary.cached == 3
    again = run_search(resumed, SPACE, ev, run_config(6, 2))
    assert again.recovered == 0 and again.evaluated == 0 and again.ok


def test_timeout_stops_asking_and_finishes_in_flight():
    def slow(genome_json):
        time.sleep(0.3)
        return toy_eval(genome_json)

    study = make_study()
    summary = run_search(study, SPACE, slow, run_config(100, 2, timeout_s=0.5))
    assert summary.stopped == "timeout"
    assert 2 <= summary.complete < 100
    assert states(study).get("RUNNING", 0) == 0


def test_baseline_samplers_work_through_repair():
    space = StagedSpace(max_operators=12)  # random points often exceed it: the driver repairs before decoding
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(0))
    run_search(study, space, toy_eval, run_config(8, 2))
    assert states(study) == {"COMPLETE": 8}
    assert all(Genome.from_json(t.user_attrs["genome"]).n_layers <= 12 for t in study.trials)


def test_single_objective_study_is_rejected():
    with pytest.raises(FlashsearchError, match="two objectives"):
        run_search(optuna.create_study(), SPACE, toy_eval, run_config(1, 1))


def test_progress_printer_lines():
    buf = io.StringIO()
    study = make_study(target_latency=20.0)
    run_search(study, SPACE, toy_eval, run_config(3, 1), Hooks(progress=Progress(buf)))
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("[0/3] search started")
    assert lines[1].startswith("[1/3] #0 done  loss ") and "(toy)" in lines[1] and "ETA" in lines[1]
    assert "search finished (completed)" in lines[-1]
    line = Progress().format(SearchEvent(kind="trial_failed", complete=3, target=24, running=2, failed=1,
                                         elapsed_s=102, eta_s=90, number=13, reason="loss diverged"))
    assert line == ("[ 3/24] #13 FAILED: loss diverged  | running 2  failed 1  | best -  | 1m42s elapsed, "
                    "ETA 1m30s")


def test_jsonable_metrics():
    np = pytest.importorskip("numpy")
    out = jsonable({"a": np.float32(1.5), "b": (1, 2), "c": float("nan"), "d": np.arange(2), 3: "x"})
    assert out == {"a": 1.5, "b": [1, 2], "c": None, "d": [0, 1], "3": "x"}
    assert math.isfinite(out["a"])


def test_real_local_ray_with_two_workers(monkeypatch):
    """The one Ray test: two task workers on a local Ray, results told as they land."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    space = LayerwiseSpace(widths=(256,), min_layers=2, max_layers=6)

    def evaluator(genome_json):  # nested: pickled by value, so Ray workers need not import this test module
        import time as _t

        from flashsearch.genome import Genome as _G

        g = _G.from_json(genome_json)
        _t.sleep(0.05)
        if g.n_layers == 6 and g.layer_types[-1] == "ffn":
            raise TrialFailed("too deep")
        return {"loss": 3.0 - 0.1 * g.n_mixers, "latency": float(g.n_layers), "latency_source": "toy"}

    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=AgingEvolutionSampler(space, population=3, sample_size=2, seed=0))
    summary = run_search(study, space, evaluator, run_config(6, 2, address=None, num_cpus_per_trial=1))
    assert summary.complete == 6 and states(study)["COMPLETE"] == 6
    assert all(t.user_attrs["error"] == "too deep" for t in study.get_trials(states=(TrialState.FAIL,)))
    import ray

    assert not ray.is_initialized()  # it shut down the Ray it started


def test_nested_metrics_are_merged_and_flattened():
    from flashsearch.trials import trials_frame

    def nested(genome_json):
        out = toy_eval(genome_json)
        return {k: out[k] for k in ("loss", "latency", "latency_source")} | {
            "seconds": 1.5, "metrics": {"proxy_params": 7, "quality_metric": "val_bpb", "extra": {"x": 1}}}

    study = make_study()
    run_search(study, SPACE, nested, run_config(1, 1))
    assert study.trials[0].user_attrs["metrics"] == {"seconds": 1.5, "proxy_params": 7, "quality_metric": "val_bpb",
                                                     "extra": {"x": 1}}
    row = trials_frame(study).iloc[0]
    assert row["metrics.proxy_params"] == 7 and row["metrics.extra.x"] == 1
