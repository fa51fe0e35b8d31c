"""Collect real short-train evaluations of genomes from search_spaces/hybrid_1b.yaml's space (surrogate data).

The NAS-Bench-301 approach: evaluate a few hundred architectures with the real quality proxy once, save them as
data in the repository, and fit a surrogate on them (experiments/searcher_benchmark, objective: surrogate).

Genomes: a mix of uniform `space.sample` draws and short mutation chains (a random start, then `space.mutate` +
`repair` a few times), so the data covers both the space and single-factor neighbourhoods (what aging evolution
actually proposes). Duplicates (same genome id) are skipped. Every genome is evaluated with the real ShortTrain
proxy (default settings, seed 0, so a genome's score is deterministic) at a SMALL token budget, and its H100
roofline decode latency (8192 tokens, batch 1) and parameter count are recorded.

    python -m experiments run collect_evaluations measure=3     # time 3 genomes at a few budgets
    python -m experiments run collect_evaluations                # 160 genomes at 12,288 tokens, 2 workers

Writes short_train_evals.csv to `out` (experiments/collect_evaluations/results, read by the searcher benchmarks
through experiments/lib/surrogate.py), with a .meta.json: the proxy, budget, latency model and space, besides the
revision, settings and machine every result carries.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from flashsearch.proxies.base import Budget
from flashsearch.proxies.quality.corpus import DEFAULT_CORPUS

from experiments.lib.output import write_text
from experiments.lib.surrogate import SPACE, WORKLOAD, layer_params

OUT_NAME = "short_train_evals.csv"
COLUMNS = ["genome_id", "genome_json", "params_json", "origin", "loss", "latency", "n_params", "budget_tokens",
           "seconds"]


@dataclass(frozen=True)
class Settings:
    n: int               # distinct genomes to evaluate
    tokens: int          # ShortTrain budget.tokens per genome
    eval_batches: int    # ShortTrain eval_batches (its default 32; fewer keeps validation cheap on 2 cores)
    seed: int            # genome sampling seed (the proxy's seed stays 0)
    measure: int         # > 0: only time this many genomes at a few budgets, write nothing
    workers: int
    out: str             # folder for short_train_evals.csv


def sample_genomes(n: int, seed: int = 0, chain_fraction: float = 0.4, chain_len: int = 4) -> list[tuple[dict, str]]:
    """n distinct (params, origin) pairs: ~(1 - chain_fraction) uniform samples, the rest mutation chains."""
    rng = random.Random(seed)
    out: list[tuple[dict, str]] = []
    seen: set[str] = set()

    def add(p: dict, origin: str) -> None:
        gid = SPACE.decode(p).id
        if gid not in seen and len(out) < n:
            seen.add(gid)
            out.append((p, origin))

    n_chain = int(round(chain_fraction * n))
    while len(out) < n - n_chain:
        add(SPACE.sample(rng), "sample")
    chain = 0
    while len(out) < n:
        p = SPACE.sample(rng)
        add(p, f"chain{chain}:0")
        for step in range(1, chain_len + 1):
            p, _ = SPACE.mutate(p, rng)
            p = SPACE.repair(p)
            add(p, f"chain{chain}:{step}")
        chain += 1
    return out


_PROXY = None
_PRED = None


def _init_worker(eval_batches: int) -> None:
    global _PROXY, _PRED
    import torch

    from flashsearch.proxies.latency.roofline import RooflinePredictor
    from flashsearch.proxies.quality.short_train import ShortTrain

    torch.set_num_threads(1)
    _PROXY = ShortTrain(threads=1, eval_batches=eval_batches)
    _PRED = RooflinePredictor(device="h100")


def evaluate(job: tuple[dict, str, int]) -> dict:
    """Real ShortTrain loss (val bits/byte) + roofline latency of one genome (runs in a worker)."""
    params, origin, tokens = job
    g = SPACE.decode(params)
    t0 = time.perf_counter()
    res = _PROXY.evaluate(g, Budget(tokens=tokens))
    secs = time.perf_counter() - t0
    return {"genome_id": g.id, "genome_json": g.to_json(), "params_json": json.dumps(params, sort_keys=True),
            "origin": origin, "loss": float(res.loss), "latency": float(_PRED.predict(g, WORKLOAD)),
            "n_params": int(sum(layer_params(op, g) for op in g.layer_types)), "budget_tokens": int(tokens),
            "seconds": round(secs, 3)}


def main(args: Settings, meta: dict) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    genomes = sample_genomes(args.n, args.seed)
    if args.measure:
        _init_worker(args.eval_batches)
        for tokens in (8192, 12288, 16384):
            for p, o in genomes[:args.measure]:
                r = evaluate((p, o, tokens))
                print(f"tokens {tokens}: {SPACE.decode(p).n_layers:2d} layers d={p['d_model']}: "
                      f"{r['seconds']:.2f} s loss {r['loss']:.4f}", flush=True)
        return

    out = Path(args.out) / OUT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t0 = time.perf_counter()
    jobs = [(p, o, args.tokens) for p, o in genomes]
    with mp.get_context("fork").Pool(args.workers, initializer=_init_worker, initargs=(args.eval_batches,)) as pool:
        for i, r in enumerate(pool.imap_unordered(evaluate, jobs), 1):
            rows.append(r)
            el = time.perf_counter() - t0
            print(f"[{i}/{len(jobs)}] {r['genome_id'][:10]} loss {r['loss']:.4f} lat {r['latency']:.2f}s "
                  f"{r['seconds']:.1f}s  elapsed {el:.0f}s eta {el / i * (len(jobs) - i):.0f}s", flush=True)
            if i % 20 == 0:  # partial saves: an interrupted collection keeps what it has
                pd.DataFrame(rows, columns=COLUMNS).to_csv(out, index=False)
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values("genome_id").reset_index(drop=True)
    df.to_csv(out, index=False)
    facts = {"proxy": f"ShortTrain(eval_batches={args.eval_batches}, threads=1), otherwise defaults (width_divisor "
                      f"16, seq_len 128, batch 4, lr 3e-3, seed 0, corpus {DEFAULT_CORPUS})",
             "budget_tokens": args.tokens, "workers": args.workers, "genomes": len(df),
             "latency": "roofline h100, bf16, batch 1, prompt 128, 8192 decode tokens",
             "space": "search_spaces/hybrid_1b.yaml (staged; attention/mamba2/deltanet)",
             "wall_seconds": round(time.perf_counter() - t0, 1)}
    # the runner adds the revision, settings and machine to this sidecar
    write_text(out.with_suffix(".meta.json"), json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))
