"""Crash-proof resume: a real `flashsearch run` killed with SIGKILL, then the same command again.

The evaluator is a cheap test plug-in (tests/plugins/fs_test_plugins.py: sleeps 0.3 s, deterministic loss,
logs each evaluation it starts); latency is the roofline predictor; workers are in-process (ray.address=local).
Also: a journal left with a stale writer lock and a half-written last line by a killed controller, a second
controller on the same out_dir, and the resume refusals (different space / objectives / latency predictor).
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from flashsearch.cli import main
from flashsearch.search.recovery import INTERRUPTED

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"
TRIALS = 12


def write_config(tmp_path: Path, **search) -> Path:
    cfg = {
        "name": "killtest",
        "seed": 0,
        "out_dir": str(tmp_path / "run"),
        "space": {"kind": "layerwise", "operators": ["attention", "mamba2", "deltanet", "ffn"],
                  "widths": [1024, 2048], "min_layers": 2, "max_layers": 8},
        "latency": {"_target_": "roofline"},
        "quality": {"_target_": "fs_test_plugins.SleepyQuality", "sleep_s": 0.3, "log": str(tmp_path / "evals.log")},
        "search": {"trials": TRIALS, "population": 4, "sample_size": 2, "workers": 2, **search},
        "ray": {"address": "local"},
        "export_top": 1,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def env() -> dict:
    path = os.pathsep.join([str(PLUGINS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "RAY_AUTH_MODE": "disabled"}


def load(out_dir: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(out_dir / "study.journal")))
    return optuna.load_study(study_name="killtest", storage=storage)


def n_complete(out_dir: Path) -> int:
    if not (out_dir / "study.journal").exists():
        return 0
    try:
        return len(load(out_dir).get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    except KeyError:  # study not created yet
        return 0


def evaluations(tmp_path: Path) -> collections.Counter:
    lines = (tmp_path / "evals.log").read_text().splitlines()
    return collections.Counter(line.split()[1] for line in lines)


@pytest.fixture()
def plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


def test_kill_9_then_rerun_completes_exactly_without_re_evaluating(tmp_path, plugin_path):
    config = write_config(tmp_path)
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "flashsearch.cli", "run", str(config)]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while n_complete(out_dir) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no progress within 60 s"
            time.sleep(0.05)
        # A second controller on the same out_dir is refused while the first is alive.
        from flashsearch.errors import FlashsearchError
        from flashsearch.search.lock import ControllerLock

        with pytest.raises(FlashsearchError, match=f"in use by another flashsearch run \\(pid {proc.pid}\\)"):
            ControllerLock(out_dir).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before = load(out_dir)
    killed_complete = len(before.get_trials(states=(TrialState.COMPLETE,)))
    assert 3 <= killed_complete < TRIALS
    running = [t for t in before.get_trials(states=(TrialState.RUNNING,))]

    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    study = load(out_dir)  # the journal reads back whole: nothing was corrupted by the kill
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    interrupted = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("error") == INTERRUPTED]
    assert sorted(t.number for t in interrupted) == sorted(t.number for t in running)
    assert [t for t in trials if t.state == TrialState.FAIL and t not in interrupted] == []
    full_params = {frozenset(r.params) for r in done}
    for t in interrupted:  # each interrupted evaluation re-ran, with the same params, and completed
        retry = [r for r in done if r.user_attrs.get("retry_of") == t.number]
        # killed while being asked: re-run only once every parameter was written (search/recovery.py)
        if "genome" in t.user_attrs or frozenset(t.params) in full_params:
            assert len(retry) == 1 and retry[0].params == t.params
        else:  # params half-written: nothing to re-run
            assert retry == []
    assert f"{len(running)} interrupted trial(s) re-queued" in again.stderr

    # Each genome was evaluated once, except those interrupted mid-evaluation (at most twice).
    counts = evaluations(tmp_path)
    interrupted_ids = {t.user_attrs.get("genome_id") for t in interrupted} - {None}
    assert {g for g, n in counts.items() if n > 1} <= interrupted_ids
    assert max(counts.values()) <= 2
    assert set(counts) == {t.user_attrs["genome_id"] for t in done if "cached_from" not in t.user_attrs}
    assert (out_dir / "trials.parquet").is_file() and (out_dir / "pareto.png").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_requeues_in_flight_trials_and_writes_the_report(tmp_path, plugin_path, sig):
    config = write_config(tmp_path)
    out_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "flashsearch.cli", "run", str(config)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while n_complete(out_dir) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and b"run the same command again to resume" in err, err.decode()[-3000:]
    trials = load(out_dir).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped and all(t.user_attrs["error"] == INTERRUPTED for t in stopped)
    queued = [t for t in trials if t.state == TrialState.WAITING]
    evaluating = [t.number for t in stopped if "genome" in t.user_attrs]  # not those stopped mid-ask
    assert evaluating and sorted(t.user_attrs["retry_of"] for t in queued) == sorted(evaluating)

    # The results so far are on disk, and the console says so.
    n_done = sum(t.state == TrialState.COMPLETE for t in trials)
    assert f"interrupted: wrote the report for the {n_done} complete trial(s)".encode() in err, err.decode()[-3000:]
    for name in ("trials.parquet", "pareto.png", "pareto.html", "hypervolume.png", "ranking.md"):
        assert (out_dir / name).is_file(), name
    table = pd.read_parquet(out_dir / "trials.parquet")
    assert (table["state"] == "COMPLETE").sum() == n_done
    assert f"of {n_done} complete trials" in (out_dir / "ranking.md").read_text()


def test_leftovers_of_a_kill_mid_write_are_repaired(tmp_path, plugin_path, capsys):
    """A controller killed inside Optuna's append leaves the writer lock and maybe a line without its newline:
    the next run removes the lock (instead of waiting Optuna's 30 s grace period) and cuts the partial line
    (which a later append would glue onto, corrupting the journal)."""
    config = write_config(tmp_path, trials=3)
    out_dir = tmp_path / "run"
    assert main(["run", str(config)]) == 0
    journal = out_dir / "study.journal"
    good = journal.read_bytes()
    os.symlink(str(journal), str(journal) + ".lock")     # JournalFileSymlinkLock's lock, never released
    with open(journal, "ab") as f:
        f.write(b'{"op_code":5,"worker_id":"dead","trial_id":9,"st')  # the write the kill cut short
    capsys.readouterr()
    t0 = time.monotonic()
    assert main(["run", str(config), "search.trials=5"]) == 0
    assert time.monotonic() - t0 < 25  # no 30 s wait for the stale lock
    err = capsys.readouterr().err
    assert "removed a stale journal lock" in err and "cut an unfinished last write" in err
    assert not os.path.lexists(str(journal) + ".lock")
    assert journal.read_bytes().startswith(good)
    assert len(load(out_dir).get_trials(states=(TrialState.COMPLETE,))) == 5


def test_damaged_journal_is_a_clear_error(tmp_path, plugin_path, capsys):
    config = write_config(tmp_path, trials=2)
    assert main(["run", str(config)]) == 0
    journal = tmp_path / "run" / "study.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"not json at all\n" + b"".join(lines[1:]))
    capsys.readouterr()
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is damaged" in err and "--force-new" in err and err.count("\n") == 1


@pytest.mark.parametrize("override,changed", [
    ("space.widths=[1024]", "space"),
    ("quality.sleep_s=0.25", "quality"),
    ("latency.device=a100", "latency"),
    ("workload.decode_tokens=4096", "workload"),
    ("search.target_latency=100", "target_latency"),
])
def test_resume_with_different_space_or_objectives_is_refused_unless_force_new(tmp_path, plugin_path, capsys,
                                                                               override, changed):
    config = write_config(tmp_path, trials=2, workers=1)
    quick = ["quality.sleep_s=0.0"] if override.split("=")[0] != "quality.sleep_s" else []
    assert main(["run", str(config), *quick]) == 0
    study_before = (tmp_path / "run" / "study.journal").read_bytes()
    capsys.readouterr()
    code = main(["run", str(config), *quick, override])
    err = capsys.readouterr().err
    assert code == 2 and f"holds a study with a different {changed}" in err and "--force-new" in err
    assert err.count("\n") == 1
    assert (tmp_path / "run" / "study.journal").read_bytes() == study_before  # untouched

    assert main(["run", str(config), *quick, override, "--force-new"]) == 0
    fresh = load(tmp_path / "run")
    assert len(fresh.trials) == 2 and all(t.state == TrialState.COMPLETE for t in fresh.trials)
    fp = json.loads(json.dumps(fresh.user_attrs["flashsearch_fingerprint"]))
    key, _, value = override.partition("=")
    assert str(value).strip("[]") in json.dumps(fp)
