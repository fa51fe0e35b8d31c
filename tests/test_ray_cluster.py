"""A real two-node Ray cluster on this machine: `ray start --head` plus `ray start --address`, a search joined to
it through `ray.address=HOST:PORT`, and the second node killed (its raylet SIGKILLed) while it runs a trial.

The search must use both nodes, survive the lost node (the trial it was running fails as `worker_died` and is
retried on the surviving node) and finish with every trial accounted for. Slow (two Ray nodes start in ~20 s):
run with `pytest -m slow tests/test_ray_cluster.py`.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"
RAY = [sys.executable, "-m", "ray.scripts.scripts"]   # the `ray` command of this interpreter
TRIALS = 8

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    path = os.pathsep.join([str(PLUGINS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


class Node:
    """One `ray start --block` process in its own session, so the node can be stopped without `ray stop`
    (which would stop every Ray on the machine, other users' too)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen([*RAY, "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args],
                                     env=env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def raylet_pid(self) -> int | None:
        """This node's raylet: the child of its `ray start` process named raylet."""
        out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            pid, comm = line.split(maxsplit=1)
            if comm.strip() == "raylet":
                return int(pid)
        return None

    def stop(self) -> None:
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def evaluations(log: Path) -> list[tuple[str, int]]:
    """(genome_id, parent pid) per started evaluation; a Ray worker's parent is its node's raylet."""
    if not log.exists():
        return []
    return [(line.split()[1], int(line.split()[2])) for line in log.read_text().splitlines() if line.strip()]


def test_search_uses_both_nodes_and_survives_losing_one(tmp_path):
    # Ray's socket paths must stay short (< 108 bytes), so the cluster's temp dir is not pytest's deep tmp_path.
    temp = Path(os.environ.get("TMPDIR", "/tmp")) / f"fsray{os.getpid()}"
    port, node2_port = free_port(), free_port()
    head = Node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"], tmp_path / "head.log")
    node2 = None
    try:
        wait_until(lambda: head.raylet_pid() is not None, 90, "the head node")
        node2 = Node([f"--address=127.0.0.1:{port}", f"--node-manager-port={node2_port}"], tmp_path / "node2.log")
        wait_until(lambda: node2.raylet_pid() is not None, 90, "the second node")
        head_raylet, node2_raylet = head.raylet_pid(), node2.raylet_pid()

        log = tmp_path / "evals.log"
        cfg = {
            "name": "cluster", "seed": 0, "out_dir": str(tmp_path / "run"),
            "space": {"kind": "layerwise", "operators": ["attention", "mamba2", "deltanet", "ffn"],
                      "widths": [1024, 2048], "min_layers": 2, "max_layers": 8},
            "latency": {"_target_": "roofline"},
            "quality": {"_target_": "fs_test_plugins.SleepyQuality", "sleep_s": 3.0, "log": str(log)},
            "search": {"trials": TRIALS, "population": 4, "sample_size": 2, "workers": 2, "retries": 1},
            "ray": {"address": f"127.0.0.1:{port}", "num_cpus_per_trial": 1},
            "export_top": 1,
        }
        config = tmp_path / "cluster.yaml"
        config.write_text(yaml.safe_dump(cfg))
        run = subprocess.Popen([sys.executable, "-m", "flashsearch.cli", "run", str(config)], env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # Kill the second node while it is running a trial, after it has finished at least one.
            wait_until(lambda: sum(p == node2_raylet for _, p in evaluations(log)) >= 2, 240,
                       "a second trial on the second node")
            os.kill(node2_raylet, signal.SIGKILL)
            out, _ = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 0, out
    finally:
        if node2 is not None:
            node2.stop()
        head.stop()

    # Trials ran on both nodes (the plug-in's log names each worker's raylet; the trials table the node ids).
    by_node = collections.Counter(p for _, p in evaluations(log))
    assert by_node[head_raylet] >= 1 and by_node[node2_raylet] >= 2, by_node
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert trials["worker_node"].dropna().nunique() == 2, trials[["number", "state", "worker_node"]]

    # Every trial is accounted for: the target count completed; what failed is the lost node's trial, retried.
    complete = trials[trials.state == "COMPLETE"]
    failed = trials[trials.state == "FAIL"]
    assert len(complete) == TRIALS
    assert set(trials.state) <= {"COMPLETE", "FAIL"}
    assert len(failed) >= 1 and set(failed.error_kind) == {"worker_died"}, failed[["number", "error_kind", "error"]]
    retried = set(trials.retry_of.dropna().astype(int))
    assert set(failed.number) <= retried
    assert set(failed.genome_id) <= set(complete.genome_id)
