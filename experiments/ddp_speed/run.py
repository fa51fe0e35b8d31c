"""Data-parallel proxy training on CPU: one candidate trained by 2 DDP ranks (gloo) vs 1 worker, side by side.

Trains one reference genome with the proxy a YAML configures (its quality: settings, `steps` steps), in rounds
that interleave the ways of running it so that load from other processes hits all alike:

- `1 worker`: ShortTrain.evaluate in this process, one torch thread;
- `2 ranks`: the same evaluation in 2 processes joined by torch.distributed (gloo, loopback), one thread each,
  each training its half of every global batch (proxies/quality/distributed.py) - the training itself;
- with `ray: true`, also the whole candidate through the search's backends on a local Ray: a Ray task (1 worker)
  vs a Ray Train TorchTrainer of 2 workers (flashsearch/search/backends.py DataParallelBackend), which adds
  the worker group's start-up per candidate.

Reported: training seconds and tokens/s (the loop's own timer, ShortTrain's train_seconds), wall seconds per
candidate, the speed-up, and the validation score of each (the 2-rank score must equal the 1-worker score within
float summation noise: the difference is printed). The GPU expectation in FLOPs terms is in docs/cluster.md.

    python -m experiments run ddp_speed                 # ~10 min on 2 cores
    python -m experiments run ddp_speed --quick         # smoke: 4 steps, 1 round, no Ray
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.lib.common import default_proxy
from experiments.lib.output import write_text
from experiments.lib.provenance import header_lines


@dataclass(frozen=True)
class Settings:
    config: str                # YAML whose quality: settings (and seed, data:) to use
    genome: str                # search_spaces/reference name
    steps: int                 # training steps per candidate
    rounds: int                # interleaved rounds (medians are reported)
    fast: bool                 # the proxy's CPU fast path (bf16 projections, compiled kernels) or fp32 eager
    ray: bool                  # also time whole candidates through Ray (task vs 2-worker Ray Train)
    out: str                   # folder for ddp_speed.{csv,md}


NOTES = """
How to read the score column. The 2 ranks see the same global batches under the same schedule; what differs is
float rounding (where the gradient sum is cut: two half-batch means averaged instead of one mean). While training
is stable the curves agree to ~1e-6 bits/byte per step (tests/test_ddp.py checks < 1e-3 after 8 steps on fp32).
Across a loss spike (this proxy has one near step 16 of 48 at lr 3e-3) any rounding-sized change is amplified to
~1e-2 and more: the control row `1 worker, lr x (1 + 1e-6)` changes nothing but the learning rate's last digits
on one worker, and moves the score by the same order as 2 ranks do. So the 2-rank score is the 1-worker score up
to the proxy's own sensitivity to rounding, which no partition of the batch can avoid (neither can a different
BLAS or CPU); the recipe ablation study measures the seed noise, which is larger still.

Speed: this machine has 2 cores shared with other jobs (see the load average), so 2 ranks compete with
everything else for the second core, and gloo's all-reduce of every gradient over loopback is paid each step.
The Ray Train row adds the worker group's start-up (actors, process group) per candidate, tens of seconds here:
data parallelism pays off only when a candidate's training is long next to that (GPU-hours per candidate at the
paper's scale, docs/cluster.md), not for the CPU screening proxy.
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _genome(name: str) -> Any:
    from flashsearch.builders import load_genome

    return load_genome(Path("search_spaces/reference") / f"{name}.yaml")


def _evaluate(kwargs: dict, genome_name: str, tokens: int) -> dict[str, Any]:
    from flashsearch.proxies.base import Budget
    from flashsearch.proxies.quality.short_train import ShortTrain

    t0 = time.perf_counter()
    r = ShortTrain(**kwargs).evaluate(_genome(genome_name), Budget(tokens=tokens))
    return {"train_s": r.extra["train_seconds"], "wall_s": time.perf_counter() - t0, "val_bpb": r.loss,
            "tokens": r.tokens, "workers": r.extra["workers"]}


def _rank(rank: int, world: int, port: int, out: str, kwargs: dict, genome_name: str, tokens: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        row = _evaluate(kwargs, genome_name, tokens)
        Path(out, f"rank{rank}.json").write_text(json.dumps(row))
    finally:
        dist.destroy_process_group()


def two_ranks(kwargs: dict, genome_name: str, tokens: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mp.start_processes(_rank, args=(2, _free_port(), tmp, kwargs, genome_name, tokens), nprocs=2,
                           start_method="spawn")
        wall = time.perf_counter() - t0
        row = json.loads(Path(tmp, "rank0.json").read_text())
    row["wall_s"] = wall            # including starting the 2 processes
    return row


def ray_candidate(config: str, overrides: list[str], genome_name: str, workers: int) -> dict[str, Any]:
    from flashsearch.config import load_config
    from flashsearch.evaluate import CandidateEvaluator
    from flashsearch.search.backends import make_backend

    cfg = load_config(config, [*overrides, f"ray.workers_per_trial={workers}", "ray.num_cpus_per_trial=2"])
    backend = make_backend(CandidateEvaluator(cfg), 1, cfg.ray)
    t0 = time.perf_counter()
    got = backend.wait_one([backend.submit(_genome(genome_name).to_json())], timeout=3600)
    wall = time.perf_counter() - t0
    assert got is not None
    outcome = got[1]
    if not outcome["ok"]:
        raise RuntimeError(f"ray candidate failed: {outcome}")
    m = outcome["result"]["metrics"]
    return {"train_s": float("nan"), "wall_s": wall, "val_bpb": outcome["result"]["loss"],
            "tokens": m["train_tokens"], "workers": workers}


def main(args: Settings, meta: dict) -> None:
    import pandas as pd
    import torch

    torch.set_num_threads(1)
    kwargs, _ = default_proxy(args.config)
    kwargs.update(fast=args.fast, threads=1)
    tokens = args.steps * int(kwargs.get("batch_size", 4)) * int(kwargs.get("seq_len", 128))
    overrides = [f"budget.tokens={tokens}", "search.fidelity=single", f"quality.fast={str(args.fast).lower()}",
                 "quality.threads=1"]
    started, load_before = time.perf_counter(), " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.ray:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    nudged = {**kwargs, "lr": float(kwargs.get("lr", 3e-3)) * (1 + 1e-6)}
    ways = {"1 worker": lambda: _evaluate(kwargs, args.genome, tokens),
            "2 ranks (DDP, gloo)": lambda: two_ranks(kwargs, args.genome, tokens),
            "1 worker, lr x (1 + 1e-6)": lambda: _evaluate(nudged, args.genome, tokens)}
    if args.ray:
        ways["Ray task, 1 worker"] = lambda: ray_candidate(args.config, overrides, args.genome, 1)
        ways["Ray Train, 2 workers"] = lambda: ray_candidate(args.config, overrides, args.genome, 2)
    rows = []
    for rnd in range(args.rounds):
        for way, fn in ways.items():
            row = {"round": rnd, "way": way, **fn(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
            rows.append(row)
            print(f"round {rnd} {way:22s} train {row['train_s']:6.1f} s  wall {row['wall_s']:6.1f} s  "
                  f"val {row['val_bpb']:.6f}  load {row['load']}", flush=True)
    if args.ray:
        import ray

        ray.shutdown()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "ddp_speed.csv", index=False)

    def med(way: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["way"] == way)

    base_train, base_wall = med("1 worker", "train_s"), med("1 worker", "wall_s")
    one_bpb = med("1 worker", "val_bpb")
    lines = ["# Data-parallel proxy training on CPU: 2 ranks vs 1 worker\n", *header_lines(meta),
             f"- finished: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{(time.perf_counter() - started) / 60:.1f} min wall",
             f"- load average (1, 5, 15 min) before: {load_before}; after: {rows[-1]['load']} (a shared machine: "
             "rounds interleave the ways, medians are reported)",
             f"- genome {args.genome}; proxy {args.config} quality ({kwargs}); {args.steps} steps of the same global "
             f"batch ({tokens} tokens) every way; one torch thread per process\n",
             "| way | train s | tokens/s (training) | speed-up (training) | wall s per candidate | speed-up (wall) | "
             "val bpb | minus 1 worker's |", "|---|---|---|---|---|---|---|---|"]
    for way in ways:
        tr, wall, bpb = med(way, "train_s"), med(way, "wall_s"), med(way, "val_bpb")
        has_train = tr == tr  # NaN for the Ray ways (their loop timer is not sent back)
        lines.append(f"| {way} | {tr:.1f} | {tokens / tr:.0f} | {base_train / tr:.2f}x | {wall:.1f} | "
                     f"{base_wall / wall:.2f}x | {bpb:.6f} | {bpb - one_bpb:+.2e} |" if has_train else
                     f"| {way} | - | - | - | {wall:.1f} | {base_wall / wall:.2f}x | {bpb:.6f} | "
                     f"{bpb - one_bpb:+.2e} |")
    lines += ["", NOTES, "Runs:\n", "| round | way | train s | wall s | val bpb | load |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['way']} | {r['train_s']:.1f} | {r['wall_s']:.1f} | {r['val_bpb']:.6f} | "
              f"{r['load']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    write_text(out / "ddp_speed.md", text)
    print(text)
