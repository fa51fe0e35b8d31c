"""Load safety: a loaded machine does not fail good candidates, and transient failures are retried once.

- budget.time_limit_s is measured in the candidate's own CPU time: a wall clock inflated 20x (simulated) does not
  fail a candidate whose own compute fits the limit, and the end is projected only after a tenth of the steps;
- a trial failed for a transient reason (time limit, OOM, lost worker) is queued again once by default, and its
  reason says which; no candidate is lost.
"""

import threading
import time

import optuna
import torch
import pytest
from optuna.trial import TrialState

from factories import full_size_genome, run_config
from flashsearch.config import SearchConfig
from flashsearch.errors import TimeLimitExceeded, TrialFailed
from flashsearch.genome import Genome
from flashsearch.proxies.base import Budget
from flashsearch.proxies.quality.short_train import ShortTrain
from flashsearch.proxies.quality.train_loop import check_time
from flashsearch.search import AgingEvolutionSampler, run_search
from flashsearch.space import StagedSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
HYBRID = full_size_genome(("deltanet", "ffn", "attention", "ffn"), d_model=1024)


def small(**kw) -> ShortTrain:
    return ShortTrain(**{**dict(seq_len=64, batch_size=8, eval_batches=2, log_every=5, lr=3e-3), **kw})


def test_a_wall_clock_inflated_by_load_does_not_fail_a_candidate(monkeypatch):
    proxy = small()
    proxy.evaluate(HYBRID, Budget(tokens=2 * 64 * 8))  # warm caches (corpus, kernels)
    t0 = time.thread_time()
    proxy.evaluate(HYBRID, Budget(tokens=12 * 64 * 8))
    own = time.thread_time() - t0
    real = time.perf_counter
    start = real()
    # The machine is 20x oversubscribed: every wall-clock second the candidate gets 1/20 s of a core.
    monkeypatch.setattr(time, "perf_counter", lambda: start + 20 * (real() - start))
    result = proxy.evaluate(HYBRID, Budget(tokens=12 * 64 * 8, time_limit_s=max(4 * own, 1.0)))
    assert result.tokens == 12 * 64 * 8


def test_own_time_still_enforces_the_limit():
    with pytest.raises(TimeLimitExceeded, match="time limit"):
        small().evaluate(HYBRID, Budget(tokens=10_000 * 64 * 8, time_limit_s=0.5))


def test_the_end_is_projected_only_after_a_warm_up_share_of_the_steps():
    # 5 of 576 steps took 14 s of a 900 s limit (slow first steps): no verdict yet; after a tenth, a real overrun is.
    check_time(0.0, 1.0, 5, 576, 900.0, now=15.0)
    with pytest.raises(TimeLimitExceeded, match="projected"):
        check_time(0.0, 1.0, 58, 576, 900.0, now=200.0)
    assert issubclass(TimeLimitExceeded, TrialFailed)


def test_transient_failures_are_retried_once_by_default_and_no_candidate_is_lost():
    assert SearchConfig().retries == 1
    space = StagedSpace()
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def loaded(genome_json):
        g = Genome.from_json(genome_json)
        with lock:
            seen[g.id] = seen.get(g.id, 0) + 1
            first = seen[g.id] == 1
        if first and len(seen) % 2:  # every other candidate runs out of time on its first, loaded attempt
            raise TimeLimitExceeded("time limit 900s would be exceeded: 5/576 steps took 14.0s, projected 1547s")
        return {"loss": 3.0 - 0.0002 * g.d_model, "latency": g.n_layers / 10, "latency_source": "toy"}

    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=AgingEvolutionSampler(space, population=4, sample_size=2, seed=0))
    summary = run_search(study, space, loaded, run_config(10, 2, retries=SearchConfig().retries))
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs["error_kind"] == "time_limit" for t in failed)
    assert all("[time_limit: queued again as attempt 2]" in t.user_attrs["error"] for t in failed)
    done_ids = {t.user_attrs["genome_id"] for t in trials if t.state == TrialState.COMPLETE}
    assert {t.user_attrs["genome_id"] for t in failed} <= done_ids  # every failed candidate completed on retry
    assert summary.complete == 10 and summary.retried == len(failed)


def test_a_second_transient_failure_says_it_was_the_retry():
    space = StagedSpace()

    def always_late(genome_json):
        raise TimeLimitExceeded("time limit 1s exceeded")

    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=AgingEvolutionSampler(space, population=4, sample_size=2, seed=0))
    run_search(study, space, always_late, run_config(1, 1, retries=1, max_failures=1))
    first, second = study.trials[:2]
    assert second.user_attrs["retry_of"] == first.number
    assert second.user_attrs["error"].endswith("[time_limit: attempt 2 failed too; not retried again]")


def test_evaluations_as_threads_of_one_process_keep_same_genome_same_result():
    """ray.address=local runs W evaluations as threads: torch's RNG and thread count are process-wide, so the
    seeding + initialisation of one must not interleave with another's, and the thread count is set once."""
    other = full_size_genome(("mamba2", "ffn", "attention", "ffn"), d_model=1024)
    proxy = small(threads=1)
    budget = Budget(tokens=3 * 64 * 8)
    alone = {g.id: proxy.evaluate(g, budget).loss for g in (HYBRID, other)}
    before = torch.get_num_threads()
    results: list[tuple[str, float]] = []
    errors: list[BaseException] = []

    def work(order):
        try:
            for g in order * 3:
                results.append((g.id, proxy.evaluate(g, budget).loss))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=([HYBRID, other] if i % 2 else [other, HYBRID],))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 24 and all(loss == alone[gid] for gid, loss in results)
    assert torch.get_num_threads() == before
