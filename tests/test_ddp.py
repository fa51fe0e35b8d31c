"""Data-parallel candidates (proxies/quality/distributed.py, search/backends.py DataParallelBackend): the loss of a
candidate trained by 2 DDP ranks equals the one-worker loss (same global batch, same schedule); rung checkpoints
are written once and continued by every rank; through Ray Train, and with a worker killed mid-candidate."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from factories import full_size_genome
from flashsearch.config import RayConfig
from flashsearch.errors import FlashsearchError
from flashsearch.proxies.base import Budget
from flashsearch.proxies.quality.short_train import ShortTrain

GENOME = full_size_genome(d_model=512, layer_types=("deltanet", "ffn", "attention", "ffn"))
SETTINGS = dict(seq_len=32, batch_size=4, eval_batches=2, log_every=2, lr=3e-3, fast=False)
STEPS = 8
# Float tolerance of the equality. The two runs see the same rows and the same schedule; what differs is where
# the gradient sum is cut (two half-batch means averaged vs one mean), i.e. float32 summation order, amplified
# a little by 8 AdamW steps. Measured differences are ~1e-6 bits/byte; 1e-3 leaves room for other CPUs.
TOL = 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))


def _leave() -> None:
    """Every rank reaches here before any tears its connections down: a rank that leaves while the other is still
    talking to it aborts the other ('terminate called without an active exception', seen once on a loaded box)."""
    dist.barrier()
    dist.destroy_process_group()


def _rank(rank: int, world: int, port: int, out: str, settings: dict, budget: Budget) -> None:
    _join(rank, world, port)
    try:
        r = ShortTrain(**settings).evaluate(GENOME, budget)
        Path(out, f"rank{rank}.json").write_text(json.dumps({"loss": r.loss, "curve": r.curve, "extra": {
            k: r.extra[k] for k in ("workers", "resumed_at_step", "steps")}}))
    finally:
        _leave()


def ddp_run(tmp: Path, settings: dict, budget: Budget, world: int = 2) -> list[dict]:
    tmp.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank, args=(world, _free_port(), str(tmp), settings, budget), nprocs=world,
                       start_method="spawn")
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(world)]


def test_two_ranks_train_like_one_worker(tmp_path: Path) -> None:
    budget = Budget(tokens=STEPS * SETTINGS["batch_size"] * SETTINGS["seq_len"])
    one = ShortTrain(**SETTINGS).evaluate(GENOME, budget)
    ranks = ddp_run(tmp_path, SETTINGS, budget)
    assert [r["extra"]["workers"] for r in ranks] == [2, 2]
    assert ranks[0]["loss"] == ranks[1]["loss"]                # every rank reports the same score
    assert ranks[0]["extra"]["steps"] == one.extra["steps"] == STEPS  # same schedule, not STEPS * 2
    assert abs(ranks[0]["loss"] - one.loss) < TOL, (ranks[0]["loss"], one.loss)
    for (s1, v1), (s2, v2) in zip(one.curve, ranks[0]["curve"]):
        assert s1 == s2 and abs(v1 - v2) < TOL
    # ...and the equality is not trivial: another seed moves the score by far more than the tolerance.
    assert abs(ShortTrain(**{**SETTINGS, "seed": 1}).evaluate(GENOME, budget).loss - one.loss) > 10 * TOL


def test_two_ranks_on_token_shards_train_like_one_worker(tmp_path: Path) -> None:
    """On subword shards each rank reads only its rows' windows (ShardSampler's rank/world_size): same score."""
    import numpy as np

    from flashsearch.data.prepare import PrepareConfig, prepare
    from flashsearch.data.tokenizer import train_bpe

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "slept", "."]
    with (tmp_path / "text.jsonl").open("w") as fh:
        for _ in range(200):
            fh.write(json.dumps({"text": " ".join(rng.choice(words, size=int(rng.integers(5, 60))))}) + "\n")
    (tmp_path / "tokenizer.json").write_text(train_bpe([" ".join(words) * 20] * 5, vocab_size=300))
    prepare(str(tmp_path / "text.jsonl"), tmp_path / "shards", str(tmp_path / "tokenizer.json"),
            PrepareConfig(shard_tokens=61))
    settings = {**SETTINGS, "shards": str(tmp_path / "shards")}
    budget = Budget(tokens=STEPS * SETTINGS["batch_size"] * SETTINGS["seq_len"])
    one = ShortTrain(**settings).evaluate(GENOME, budget)
    ranks = ddp_run(tmp_path / "ddp", settings, budget)
    assert abs(ranks[0]["loss"] - one.loss) < TOL and ranks[0]["loss"] == ranks[1]["loss"]


def test_rung_checkpoint_from_ranks_continues_like_one_worker(tmp_path: Path) -> None:
    """Rank 0 writes the rung-0 checkpoint; 2 ranks continue it to rung 1 as 1 worker continues its own."""
    ladder = (4 * 128, 8 * 128)
    rung = [Budget(tokens=t, ladder=ladder, checkpoint_dir=str(tmp_path / name))
            for name in ("one", "ddp") for t in ladder]
    proxy = ShortTrain(**SETTINGS)
    proxy.evaluate(GENOME, rung[0])
    one = proxy.evaluate(GENOME, rung[1])
    ddp_run(tmp_path / "r0", SETTINGS, rung[2])
    written = sorted(p.name for p in (tmp_path / "ddp").rglob("*.safetensors"))
    assert written == ["rung0-seed0.safetensors"]
    ranks = ddp_run(tmp_path / "r1", SETTINGS, rung[3])
    assert one.extra["resumed_at_step"] > 0
    assert [r["extra"]["resumed_at_step"] for r in ranks] == [one.extra["resumed_at_step"]] * 2
    assert abs(ranks[0]["loss"] - one.loss) < TOL, (ranks[0]["loss"], one.loss)


def _rank_past_its_limit(rank: int, world: int, port: int, out: str) -> None:
    """Rank 1's clock says it is far past the time limit, rank 0's does not."""
    from flashsearch.errors import TimeLimitExceeded
    from flashsearch.proxies.quality import train_loop

    _join(rank, world, port)
    if rank == 1:
        train_loop.own_seconds = lambda device: 1e9  # type: ignore[assignment]
    try:
        ShortTrain(**SETTINGS).evaluate(GENOME, Budget(tokens=8 * 128, time_limit_s=1000.0))
        verdict = "finished"
    except TimeLimitExceeded as e:
        verdict = e.reason
    finally:
        _leave()
    Path(out, f"rank{rank}.txt").write_text(verdict)


def test_a_rank_past_the_time_limit_stops_every_rank(tmp_path: Path) -> None:
    """Without agreement rank 0 would wait forever in the next step's all-reduce."""
    import time

    ctx = mp.start_processes(_rank_past_its_limit, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                             start_method="spawn", join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks did not stop together: one is left waiting in a collective")
    assert (tmp_path / "rank1.txt").read_text().startswith("time limit 1000s exceeded")
    assert "another worker" in (tmp_path / "rank0.txt").read_text()


def test_ray_config_checks_the_data_parallel_settings() -> None:
    assert RayConfig(workers_per_trial=2, gpus_per_worker=1).workers_per_trial == 2
    for bad in (dict(workers_per_trial=0), dict(workers_per_trial=2, gpus_per_worker=2),
                dict(workers_per_trial=2, address="local"), dict(gpus_per_worker=1),
                dict(workers_per_trial=2, num_gpus_per_trial=1.0)):
        with pytest.raises(FlashsearchError, match="ray\\."):
            RayConfig(**bad)  # type: ignore[arg-type]


def test_a_batch_that_does_not_split_is_one_clear_error(tmp_path: Path) -> None:
    from flashsearch.proxies.quality.distributed import DataParallel, rank_rows

    assert rank_rows(4, DataParallel(1, 2)) == slice(2, 4)
    with pytest.raises(FlashsearchError, match="batch_size=5 does not split evenly over"):
        rank_rows(5, DataParallel(0, 2))


# ---- through Ray Train (slow: a local Ray instance, worker groups of 2 processes) ---------------------------------

RUNG_TOKENS = [4 * 128, 12 * 128]   # rung 0: 4 steps; rung 1 continues from its checkpoint to 12


@dataclasses.dataclass(frozen=True)
class KillableEvaluator:
    """CandidateEvaluator that records each rank's process id in `folder` and, until the test has killed one,
    parks rank 1 of its first attempt (so the test kills a worker while its candidate is in flight)."""

    inner: Any
    folder: str

    def __call__(self, genome_json: str, rung: int | None = None) -> Any:
        import time

        rank = dist.get_rank()
        Path(self.folder, f"rank{rank}-pid{os.getpid()}").touch()
        while rank == 1 and not Path(self.folder, "killed").exists():
            time.sleep(0.1)
        return self.inner(genome_json, rung)


def _run_config(tmp: Path) -> Any:
    from flashsearch.config import BudgetConfig, RunConfig

    return RunConfig(out_dir=str(tmp / "run"), quality={"_target_": "short_train", **SETTINGS},
                     budget=BudgetConfig(tokens=RUNG_TOKENS[-1], rungs=list(RUNG_TOKENS)),
                     ray=RayConfig(workers_per_trial=2, num_cpus_per_trial=2.0))


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One local Ray on loopback for the module; test_ddp importable by its workers (KillableEvaluator)."""
    import tempfile

    import ray

    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")   # short: Ray's socket paths have an OS length limit
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE")}
    here = str(Path(__file__).resolve().parent)
    os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [here, saved["PYTHONPATH"]])), RAY_TMPDIR=ray_tmp,
                      RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    yield ray
    ray.shutdown()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)


def _one(backend: Any, genome_json: str, rung: int | None) -> dict:
    got = backend.wait_one([backend.submit(genome_json, rung)], timeout=600)
    assert got is not None
    return got[1]


@pytest.mark.slow
def test_ray_train_two_workers_give_the_one_worker_score(tmp_path: Path, local_ray: Any) -> None:
    from flashsearch.evaluate import CandidateEvaluator
    from flashsearch.search.backends import DataParallelBackend, make_backend

    cfg = _run_config(tmp_path)
    evaluator = CandidateEvaluator(cfg)
    backend = make_backend(evaluator, 1, RayConfig(num_cpus_per_trial=2.0, workers_per_trial=2), str(tmp_path / "train"))
    assert isinstance(backend, DataParallelBackend)
    outcome = _one(backend, GENOME.to_json(), None)
    assert outcome["ok"], outcome
    assert outcome["workers"] == 2 and outcome["node"]
    one = evaluator(GENOME.to_json())             # the same candidate trained by this process alone
    assert abs(outcome["result"]["loss"] - one["loss"]) < TOL
    assert outcome["result"]["metrics"]["train_tokens"] == one["metrics"]["train_tokens"]


@pytest.mark.slow
def test_a_killed_worker_retries_from_the_last_rung_checkpoint(tmp_path: Path, local_ray: Any) -> None:
    import signal
    import time

    from flashsearch.evaluate import CandidateEvaluator
    from flashsearch.search.backends import make_backend

    cfg = _run_config(tmp_path)
    ckpts = tmp_path / "checkpoints"
    inner = CandidateEvaluator(cfg, checkpoint_dir=str(ckpts))
    marks = tmp_path / "marks"
    marks.mkdir()
    backend = make_backend(KillableEvaluator(inner, str(marks)), 1,
                           RayConfig(num_cpus_per_trial=2.0, workers_per_trial=2), str(tmp_path / "train"))
    genome = GENOME.to_json()
    (marks / "killed").touch()                    # rung 0 runs undisturbed and leaves its checkpoint
    rung0 = _one(backend, genome, 0)
    assert rung0["ok"], rung0
    assert [p.name for p in ckpts.rglob("*.safetensors")] == ["rung0-seed0.safetensors"]
    for p in marks.iterdir():
        p.unlink()

    handle = backend.submit(genome, 1)
    deadline = time.monotonic() + 300
    while not list(marks.glob("rank1-pid*")):
        assert time.monotonic() < deadline, "rank 1 never started"
        time.sleep(0.2)
    victim = int(next(marks.glob("rank1-pid*")).name.split("pid")[1])
    (marks / "killed").touch()                    # the restarted rank 1 must not park again
    os.kill(victim, signal.SIGKILL)
    got = backend.wait_one([handle], timeout=600)
    assert got is not None
    outcome = got[1]
    assert outcome["ok"], outcome
    pids = {p.name for p in marks.glob("rank1-pid*")}
    assert len(pids) == 2                         # rank 1 ran twice: killed, then restarted with its group
    metrics = outcome["result"]["metrics"]
    # Continued from the checkpoint: only rung 1's own tokens were trained (by the attempt that finished).
    assert metrics["train_tokens"] == RUNG_TOKENS[1]
    assert 0 < metrics["new_tokens"] < RUNG_TOKENS[1]
    # ...and the score is the one an undisturbed one-worker continuation gets.
    alone = CandidateEvaluator(cfg, checkpoint_dir=str(tmp_path / "alone"))
    alone(genome, rung=0)
    undisturbed = alone(genome, rung=1)
    assert undisturbed["metrics"]["new_tokens"] == metrics["new_tokens"]
    assert abs(outcome["result"]["loss"] - undisturbed["loss"]) < TOL


SEARCH = """
name: ddp
out_dir: {out}
space: {{kind: staged, widths: [256, 512], max_blocks_per_stage: 1, max_operators: 6, vocab_size: 1024}}
quality: {{_target_: short_train, seq_len: 32, batch_size: 4, eval_batches: 2, log_every: 2, fast: false}}
budget: {{tokens: 1536, rungs: [512, 1536], eta: 2}}
search: {{trials: 3, workers: 1, population: 2, sample_size: 2, fidelity: multi}}
ray: {{workers_per_trial: 2, num_cpus_per_trial: 2}}
export_top: 1
"""


@pytest.mark.slow
def test_a_search_with_two_workers_per_trial_accounts_for_every_trial(tmp_path: Path) -> None:
    """`flashsearch run` with ray.workers_per_trial=2 on a local Ray (loopback): every trial completes, trained by
    2 ranks, and the promotion continued from its rung checkpoint."""
    import subprocess
    import sys
    import tempfile

    import pandas as pd

    config = tmp_path / "ddp.yaml"
    config.write_text(SEARCH.format(out=tmp_path / "run"))
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run([sys.executable, "-m", "flashsearch.cli", "run", str(config)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert set(df["state"]) == {"COMPLETE"}, df[["state", "error"]]
    assert (df["rung"] == 0).sum() == 3 and (df["rung"] == 1).sum() == 1    # 3 screened, the best one promoted
    assert set(df["metrics.train_workers"]) == {2}
    promoted = df[df["rung"] == 1].iloc[0]
    assert promoted["metrics.new_tokens"] < promoted["metrics.train_tokens"]  # continued from the checkpoint


@pytest.mark.slow
def test_two_node_cluster_search_with_two_workers_per_trial(tmp_path: Path) -> None:
    """The issue's acceptance run: a generated corpus prepared into many shards, then a search on them whose
    candidates train with ray.workers_per_trial=2 on a 2-node local Ray cluster (loopback) completes with every
    trial accounted for. Each node offers 1 CPU and each rank asks for 1, so every candidate's 2 ranks run on the
    2 nodes, joined by gloo."""
    import json
    import random
    import subprocess
    import sys

    import pandas as pd

    from test_ray_cluster import Node, env, free_port, wait_until

    rng = random.Random(0)
    words = [w for w in "the a model state layer token memory attention scan decay gate width depth".split()]
    corpus = tmp_path / "generated.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))})
                              + "\n" for _ in range(400)))
    shards = tmp_path / "shards"
    prep = subprocess.run([sys.executable, "-m", "flashsearch.cli", "data", "prepare", str(corpus), str(shards),
                           "--tokenizer", "bytes", "--shard-tokens", "4096"], env=env(), capture_output=True,
                          text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert json.loads((shards / "manifest.json").read_text())["documents"] == 400
    assert len(list(shards.glob("train-*.bin"))) > 10                    # a multi-shard corpus

    temp = Path(os.environ.get("TMPDIR", "/tmp")) / f"fsddp{os.getpid()}"   # Ray's socket paths must stay short
    port, node2_port = free_port(), free_port()
    loopback = "--node-ip-address=127.0.0.1"
    head = Node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}", loopback],
                tmp_path / "head.log")
    node2 = None
    try:
        wait_until(lambda: head.raylet_pid() is not None, 90, "the head node")
        node2 = Node([f"--address=127.0.0.1:{port}", f"--node-manager-port={node2_port}", loopback],
                     tmp_path / "node2.log")
        wait_until(lambda: node2.raylet_pid() is not None, 90, "the second node")
        config = tmp_path / "ddp.yaml"
        config.write_text(SEARCH.format(out=tmp_path / "run").replace(
            "ray: {workers_per_trial: 2, num_cpus_per_trial: 2}",
            f"ray: {{workers_per_trial: 2, num_cpus_per_trial: 2, address: '127.0.0.1:{port}'}}\n"
            f"data: {{shards: '{shards}'}}"))
        done = subprocess.run([sys.executable, "-m", "flashsearch.cli", "run", str(config)], env=env(),
                              cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        if node2 is not None:
            node2.stop()
        head.stop()
    df = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert set(df["state"]) == {"COMPLETE"}, df[["state", "error"]]
    assert (df["rung"] == 0).sum() == 3 and (df["rung"] == 1).sum() == 1
    assert set(df["metrics.train_workers"]) == {2}
