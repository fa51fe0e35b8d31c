"""Crash windows of the controller, each closed and each tested with a real kill (SIGKILL) at that point:

- a trial stopped in flight (abandon) or failed with retries left: its retry is enqueued before the FAIL is
  written, so a kill between the two loses nothing and the next start does not enqueue it twice;
- seeds: the done-marker is written first and only missing seeds are enqueued, so a kill mid-seeding neither
  loses seeds nor trains one twice;
- enqueued trials are fsynced;
- the study records the params of the genome evaluated (baselines' proposals repaired).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from factories import run_config
from flashsearch.search import run_search
from flashsearch.search import attrs
from flashsearch.search.recovery import enqueue_seeds, recover_orphans
from flashsearch.search.storage import journal_storage
from flashsearch.space import StagedSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]

PRELUDE = """
import os, random, signal, sys
import optuna
from optuna.trial import TrialState
optuna.logging.set_verbosity(optuna.logging.WARNING)
from flashsearch.genome import Genome
from flashsearch.search import run_search
from flashsearch.search.recovery import INTERRUPTED, abandon, enqueue_seeds
from factories import run_config
from flashsearch.search.storage import journal_storage
from flashsearch.space import StagedSpace

SPACE = StagedSpace()
study = optuna.create_study(study_name="s", storage=journal_storage(sys.argv[1]),
                            directions=["minimize", "minimize"], load_if_exists=True)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def kill_after(obj, name, when=lambda *a, **k: True):
    real = getattr(obj, name)
    def wrapped(*a, **k):
        out = real(*a, **k)
        if when(*a, **k):
            die()
        return out
    setattr(obj, name, wrapped)
"""


def killed(script: str, journal: Path) -> None:
    """Run PRELUDE + script in a fresh interpreter on `journal`; it must die by SIGKILL at the planted point."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(script), str(journal)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def load(journal: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=journal_storage(journal))


def retries_of(study, number):
    return [t for t in study.get_trials() if t.user_attrs.get("retry_of") == number]


IN_FLIGHT = """
trial = study.ask(fixed_distributions=SPACE.distributions())
genome = SPACE.decode(SPACE.repair(trial.params))
trial.set_user_attr("genome", genome.to_json())
trial.set_user_attr("genome_id", genome.id)
"""


def test_kill_right_after_an_interrupted_trial_is_failed_loses_nothing(tmp_path):
    journal = tmp_path / "s.journal"
    killed(IN_FLIGHT + """
kill_after(study, "tell", lambda *a, **k: k.get("state") == TrialState.FAIL)
abandon(study, trial._trial_id, INTERRUPTED)
""", journal)
    study = load(journal)
    assert study.trials[0].state == TrialState.FAIL
    retry = retries_of(study, 0)
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING and retry[0].system_attrs["fixed_params"] == \
        study.trials[0].params


def test_kill_between_the_requeue_and_the_fail_requeues_once(tmp_path):
    journal = tmp_path / "s.journal"
    killed(IN_FLIGHT + """
kill_after(study, "enqueue_trial")
abandon(study, trial._trial_id, INTERRUPTED)
""", journal)
    study = load(journal)
    assert study.trials[0].state == TrialState.RUNNING and len(retries_of(study, 0)) == 1
    assert recover_orphans(study, StagedSpace()) == 1  # the next start: fails it, finds its retry queued
    assert study.trials[0].state == TrialState.FAIL and len(retries_of(study, 0)) == 1


def test_kill_right_after_a_failed_trial_is_told_keeps_its_retry(tmp_path):
    journal = tmp_path / "s.journal"
    killed("""
def broken(genome_json):
    raise RuntimeError("transient")
kill_after(study, "tell", lambda *a, **k: k.get("state") == TrialState.FAIL)
run_search(study, SPACE, broken, run_config(1, 1, retries=1))
""", journal)
    study = load(journal)
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].user_attrs["error_kind"] == "error"
    retry = retries_of(study, 0)
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING and retry[0].user_attrs["attempt"] == 2


def test_kill_mid_seeding_enqueues_each_seed_exactly_once(tmp_path):
    journal = tmp_path / "s.journal"
    rng = __import__("random").Random(0)
    seeds = [StagedSpace().sample(rng) for _ in range(3)]
    (tmp_path / "seeds.json").write_text(json.dumps(seeds))
    killed(f"""
import json
seeds = json.loads(open({str(tmp_path / "seeds.json")!r}).read())
calls = []
kill_after(study, "enqueue_trial", lambda *a, **k: calls.append(1) or len(calls) == 1)
enqueue_seeds(study, seeds)
""", journal)
    study = load(journal)
    assert study.user_attrs[attrs.SEEDS_ENQUEUED] == 3 and len(study.trials) == 1
    assert enqueue_seeds(study, seeds) == 2  # the next start adds only the missing ones
    assert enqueue_seeds(study, seeds) == 0
    assert sorted(t.user_attrs["seed"] for t in study.trials) == [0, 1, 2]
    assert [t.system_attrs["fixed_params"] for t in sorted(study.trials, key=lambda t: t.user_attrs["seed"])] == seeds


def test_enqueued_trials_are_fsynced(tmp_path, monkeypatch):
    study = optuna.create_study(study_name="s", storage=journal_storage(tmp_path / "s.journal"),
                                directions=["minimize", "minimize"])
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    study.enqueue_trial({"d_model": 1024})
    assert len(synced) == 1
    study.ask()  # an ordinary asked trial (RUNNING) is not a state the resume relies on yet
    trial = study.ask()
    synced.clear()
    trial.set_user_attr("x", 1)
    assert synced == []


@pytest.mark.parametrize("sampler", [optuna.samplers.RandomSampler(seed=0), optuna.samplers.TPESampler(seed=0)])
def test_the_study_records_the_params_of_the_genome_evaluated(sampler):
    space = StagedSpace()  # 59% of uniform draws exceed its 30-operator limit and get repaired
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)

    def evaluate(genome_json):
        return {"loss": 1.0, "latency": 1.0, "latency_source": "toy"}

    run_search(study, space, evaluate, run_config(20, 1))
    repaired = 0
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert space.repair(t.params) == t.params
        assert space.decode(t.params).id == t.user_attrs["genome_id"]
        if "proposed_params" in t.user_attrs:
            repaired += 1
            assert t.user_attrs["proposed_params"] != t.params
    assert repaired >= 3
