"""Multi-fidelity resume: a real `flashsearch run` (tiny short_train, real rung checkpoints) killed with SIGKILL
while a promotion is training, then the same command again: nothing lost, no finished rung trained again, the
killed promotion continued from its candidate's checkpoint, and the checkpoints cleaned up at the end."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from flashsearch.search.rungs import candidate_of, rung_of

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 9


def write_config(tmp_path: Path) -> Path:
    tps = 16 * 2  # seq_len x batch_size
    cfg = {
        "name": "mfkill", "seed": 0, "out_dir": str(tmp_path / "run"),
        "space": {"kind": "layerwise", "operators": ["attention", "deltanet", "ffn"], "widths": [512, 1024],
                  "min_layers": 2, "max_layers": 4},
        "latency": {"_target_": "roofline"},
        "quality": {"_target_": "short_train", "seq_len": 16, "batch_size": 2, "eval_batches": 1,
                    "log_every": 2, "corpus": "pydoc"},
        # rung 2 is long enough (1000 steps, seconds even on an idle machine) to catch a promotion mid-training
        "budget": {"tokens": 1000 * tps, "rungs": [4 * tps, 12 * tps, 1000 * tps], "eta": 3},
        "search": {"trials": TRIALS, "population": 4, "sample_size": 2, "workers": 2, "fidelity": "multi"},
        "ray": {"address": "local"},
        "export_top": 1,
    }
    path = tmp_path / "mf.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def load(out_dir: Path) -> optuna.Study | None:
    path = out_dir / "study.journal"
    if not path.exists():
        return None
    try:
        return optuna.load_study(study_name="mfkill", storage=JournalStorage(JournalFileBackend(str(path))))
    except KeyError:
        return None


def running_promotion(out_dir: Path) -> bool:
    study = load(out_dir)
    return study is not None and any(rung_of(t) == 2 for t in study.get_trials(states=(TrialState.RUNNING,)))


def test_kill_9_mid_promotion_then_rerun(tmp_path) -> None:
    config = write_config(tmp_path)
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "flashsearch.cli", "run", str(config)]
    env = {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not running_promotion(out_dir):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no rung-2 promotion started within 240 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    killed = load(out_dir)
    assert killed is not None
    victim = [t for t in killed.get_trials(states=(TrialState.RUNNING,)) if rung_of(t) == 2]
    assert victim
    victim_candidate = candidate_of(victim[0])
    gid = victim[0].user_attrs["genome_id"]
    ckpts = out_dir / "checkpoints" / gid
    assert (ckpts / "rung1-seed0.safetensors").is_file()          # what the promotion continues from
    done_before = {(candidate_of(t), rung_of(t)) for t in killed.get_trials(states=(TrialState.COMPLETE,))}

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    study = load(out_dir)
    assert study is not None
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "cached_from" not in t.user_attrs]
    pairs = collections.Counter((candidate_of(t), rung_of(t)) for t in complete)
    assert max(pairs.values()) == 1                                # no rung trained to completion twice
    assert done_before <= set(pairs)                               # nothing lost
    assert sum(1 for (_, k) in pairs if k == 0) == TRIALS
    assert (victim_candidate, 2) in pairs                          # the killed promotion ran again...
    rerun = next(t for t in complete if (candidate_of(t), rung_of(t)) == (victim_candidate, 2))
    assert rerun.user_attrs["metrics"]["new_tokens"] < rerun.user_attrs["metrics"]["train_tokens"]  # ...resumed
    fails = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("error_kind") == "interrupted" for t in fails)
    assert not (out_dir / "checkpoints").exists()                  # cleaned up once nothing was due
    df = pd.read_parquet(out_dir / "trials.parquet")
    front_rungs = set(df[df["state"] == "COMPLETE"]["rung"].dropna().astype(int))
    assert front_rungs == {0, 1, 2}
    ranking = (out_dir / "ranking.md").read_text()
    assert "top rung" in ranking
