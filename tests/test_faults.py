"""Faults never stop a search: each becomes a FAILED trial with its reason (and kind), the search goes on, and
search.retries re-runs transient ones. In-process workers except the two behaviours only Ray has (a worker
process killed mid-task; a timed-out task whose worker is killed)."""

import collections
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from factories import run_config
from flashsearch.search.recovery import enqueue_seeds
from flashsearch.config import load_config
from flashsearch.errors import FlashsearchError, TrialFailed
from flashsearch.genome import Genome
from flashsearch.search import AgingEvolutionSampler, run_search
from flashsearch.space import LayerwiseSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = LayerwiseSpace(operators=("attention", "mamba2", "deltanet", "ffn"), widths=(256, 512, 768, 1024, 1280),
                       min_layers=2, max_layers=8)


def toy(g: Genome) -> dict:
    return {"loss": 3.0 - 0.1 * g.n_mixers - 0.0001 * g.d_model, "latency": g.n_layers * g.d_model / 1000.0,
            "latency_source": "toy"}


def seed_of_width(width: int, layers=("deltanet", "ffn", "mamba2", "ffn")) -> dict:
    return SPACE.encode(SPACE.arch.genome(list(layers), width))


def study_(seed=0):
    return optuna.create_study(directions=["minimize", "minimize"],
                               sampler=AgingEvolutionSampler(SPACE, population=4, sample_size=2, seed=seed))


def by_width(study, width):
    return [t for t in study.trials if Genome.from_json(t.user_attrs["genome"]).d_model == width]


def test_each_fault_is_a_failed_trial_with_its_reason_and_the_search_goes_on():
    fault = {SPACE.decode(seed_of_width(w)).id: w for w in (256, 512, 768, 1024, 1280)}

    def evaluator(genome_json):
        g = Genome.from_json(genome_json)
        which = fault.get(g.id)
        if which == 256:
            raise MemoryError("Unable to allocate 64.0 GiB for an array")
        if which == 512:
            return {**toy(g), "loss": float("nan")}
        if which == 768:
            raise ValueError("shapes (3,4) and (5,6) not aligned\nmore detail")
        if which == 1024:
            time.sleep(3.0)  # over trial_timeout_s: the thread is abandoned, the trial FAILED
        if which == 1280:
            raise TrialFailed("loss diverged (inf) at step 7")
        return toy(g)

    study = study_()
    seeds = [seed_of_width(w) for w in (256, 512, 768, 1024, 1280)]
    t0 = time.monotonic()
    enqueue_seeds(study, seeds, SPACE)
    summary = run_search(study, SPACE, evaluator, run_config(6, 2, trial_timeout_s=0.5, max_failures=100))
    assert time.monotonic() - t0 < 2.5  # the 3 s evaluation was not waited for
    assert summary.ok and summary.complete == 6
    failed = {Genome.from_json(t.user_attrs["genome"]).id: t for t in study.get_trials(states=(TrialState.FAIL,))}
    expect = {
        256: ("oom", "out of memory: MemoryError: Unable to allocate 64.0 GiB for an array"),
        512: ("invalid_result", "non-finite loss (nan)"),
        768: ("error", "ValueError: shapes (3,4) and (5,6) not aligned"),
        1024: ("timeout", "timeout after 0.5 s (search.trial_timeout_s)"),
        1280: ("rejected", "loss diverged (inf) at step 7"),
    }
    for width, (kind, reason) in expect.items():
        t = failed[SPACE.decode(seed_of_width(width)).id]
        assert (t.user_attrs["error_kind"], t.user_attrs["error"]) == (kind, reason), width
    assert summary.failed == 5 and summary.retried == 0  # retries default to 0

    from flashsearch.trials import trials_frame

    df = trials_frame(study)
    assert set(df.loc[df["state"] == "FAIL", "error_kind"]) == {k for k, _ in expect.values()}
    assert df.loc[df["state"] == "FAIL", "error"].notna().all()


def test_torch_cuda_oom_is_out_of_memory():
    torch = pytest.importorskip("torch")

    def evaluator(genome_json):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    study = study_()
    run_search(study, SPACE, evaluator, run_config(1, 1, max_failures=0))
    t = study.trials[0]
    assert t.user_attrs["error_kind"] == "oom"
    assert t.user_attrs["error"].startswith("out of memory: OutOfMemoryError: CUDA out of memory.")


class FlakyOnce:
    """Fails each genome's first evaluation (transiently), succeeds afterwards; thread-safe."""

    def __init__(self, exc=RuntimeError("connection reset by peer")):
        self.exc = exc
        self.calls = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, genome_json):
        g = Genome.from_json(genome_json)
        with self.lock:
            self.calls[g.id] += 1
            first = self.calls[g.id] == 1
        if first:
            raise self.exc
        return toy(g)


def test_retries_rerun_transient_failures_and_record_retry_of():
    ev = FlakyOnce()
    study = study_()
    summary = run_search(study, SPACE, ev, run_config(4, 2, retries=1))
    assert summary.ok and summary.complete == 4
    done = study.get_trials(states=(TrialState.COMPLETE,))
    failed = {t.number: t for t in study.get_trials(states=(TrialState.FAIL,))}
    assert len(done) == 4 and len(failed) == 4 and summary.retried == 4
    for t in done:  # every success is the retry of a failed first attempt with the same params
        assert t.user_attrs["attempt"] == 2
        first = failed[t.user_attrs["retry_of"]]
        assert first.params == t.params and first.user_attrs["error_kind"] == "error"
    assert all(n == 2 for n in ev.calls.values())


def test_retries_are_bounded_and_verdicts_are_not_retried():
    always = collections.Counter()

    def evaluator(genome_json):
        g = Genome.from_json(genome_json)
        always[g.id] += 1
        if g.d_model == 256:
            raise TrialFailed("rejected by the proxy")  # a verdict: never retried
        raise MemoryError("still too big")             # transient kind: retried `retries` times

    study = study_()
    seeds = [seed_of_width(256), seed_of_width(512)]
    enqueue_seeds(study, seeds, SPACE)
    summary = run_search(study, SPACE, evaluator, run_config(1, 1, retries=2, max_failures=3))
    assert summary.stopped == "max_failures"
    assert always[SPACE.decode(seeds[0]).id] == 1
    assert always[SPACE.decode(seeds[1]).id] == 3  # first try + 2 retries, then given up
    tries = [t for t in study.trials if t.user_attrs.get("genome_id") == SPACE.decode(seeds[1]).id]
    assert [t.user_attrs.get("attempt", 1) for t in tries] == [1, 2, 3]
    assert [t.user_attrs.get("retry_of") for t in tries] == [None, tries[0].number, tries[1].number]


def test_fault_settings_are_config_keys_and_validated(tmp_path):
    from pathlib import Path

    hybrid = Path(__file__).resolve().parents[1] / "search_spaces" / "hybrid_1b.yaml"
    cfg = load_config(hybrid, ["search.trial_timeout_s=30", "search.retries=2"])
    assert cfg.search.trial_timeout_s == 30 and cfg.search.retries == 2
    assert load_config(hybrid).search.retries == 1 and load_config(hybrid).search.trial_timeout_s is None
    with pytest.raises(FlashsearchError, match="search.trial_timeout_s must be a positive"):
        load_config(hybrid, ["search.trial_timeout_s=0"])
    with pytest.raises(FlashsearchError, match="search.retries must be >= 0"):
        load_config(hybrid, ["search.retries=-1"])


def test_real_ray_killed_worker_and_timeout(monkeypatch):
    """Ray-only behaviours: a worker process killed mid-task (kill -9), and a task over the per-trial timeout
    cancelled (its worker killed). Both FAIL with the reason; the search completes on fresh workers."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    killer, sleeper = seed_of_width(256), seed_of_width(512)
    killer_id, sleeper_id = SPACE.decode(killer).id, SPACE.decode(sleeper).id

    killer_json, sleeper_json = SPACE.decode(killer).to_json(), SPACE.decode(sleeper).to_json()

    def evaluator(genome_json):  # nested: pickled by value, so Ray workers need not import this module
        import json as _json
        import os as _os
        import time as _time

        # Plain JSON, no Genome: building one loads the operator registry (torch), whose import time in a
        # fresh worker on a busy machine would eat into the trial timeout this test is about.
        if genome_json == killer_json:
            _os.kill(_os.getpid(), 9)
        if genome_json == sleeper_json:
            _time.sleep(600)
        layers = _json.loads(genome_json)["layer_types"]
        n_mixers = sum(t != "ffn" for t in layers)
        return {"loss": 3.0 - 0.1 * n_mixers, "latency": float(len(layers)), "latency_source": "toy"}

    study = study_()
    t0 = time.monotonic()
    # The timeout counts from submission, so it includes starting a fresh Ray worker: on a machine whose cores
    # are busy with other jobs that took over 4 s (every trial then timed out), so the limit leaves room for it.
    enqueue_seeds(study, [killer, sleeper], SPACE)
    summary = run_search(study, SPACE, evaluator, run_config(3, 2, address=None, num_cpus_per_trial=1, trial_timeout_s=20.0))
    assert time.monotonic() - t0 < 120
    assert summary.ok and summary.complete == 3
    failed = {t.user_attrs["genome_id"]: t for t in study.get_trials(states=(TrialState.FAIL,))}
    assert failed[killer_id].user_attrs["error_kind"] == "worker_died"
    assert failed[killer_id].user_attrs["error"].startswith("worker died (WorkerCrashedError)")
    assert failed[sleeper_id].user_attrs["error_kind"] == "timeout"
    assert failed[sleeper_id].user_attrs["error"] == "timeout after 20 s (search.trial_timeout_s)"
    import ray

    assert not ray.is_initialized()
