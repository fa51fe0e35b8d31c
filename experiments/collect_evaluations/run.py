"""Collect real short-train evaluations of genomes from search_spaces/hybrid_1b.yaml's space (surrogate data).

The NAS-Bench-301 approach: evaluate a few hundred architectures with the real quality proxy once, save them as
data in the repository, and fit a surrogate on them (experiments/searcher_benchmark.py --objective surrogate).

Genomes: a mix of uniform `space.sample` draws and short mutation chains (a random start, then `space.mutate` +
`repair` a few times), so the data covers both the space and single-factor neighbourhoods (what aging evolution
actually proposes). Duplicates (same genome id) are skipped. Every genome is evaluated with the real ShortTrain
proxy (default settings, seed 0, so a genome's score is deterministic) at a SMALL token budget, and its H100
roofline decode latency (8192 tokens, batch 1) and parameter count are recorded.

    python experiments/collect_evaluations.py --measure 3            # time 3 genomes at a few budgets
    python experiments/collect_evaluations.py --n 160 --tokens 12288 --workers 2

Writes experiments/data/short_train_evals.csv (+ .meta.json: command, date, machine, settings).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

os.environ.setdefault("OMP_NUM_THREADS", "1")

from flashsearch.genome import Genome  # noqa: E402
from flashsearch.proxies.base import Budget, Workload  # noqa: E402
from flashsearch.proxies.quality.corpus import DEFAULT_CORPUS  # noqa: E402
from flashsearch.space import ArchDefaults, StagedSpace  # noqa: E402

# The hybrid_1b.yaml space (its space: section; these are also StagedSpace's defaults).
SPACE = StagedSpace(arch=ArchDefaults(op_options={"mamba2": {"d_state": 128, "expand": 2, "head_dim": 64}}))
WORKLOAD = Workload(device="h100", batch=1, prompt_len=128, decode_tokens=8192)
DEFAULT_OUT = Path(__file__).parent / "data" / "short_train_evals.csv"
COLUMNS = ["genome_id", "genome_json", "params_json", "origin", "loss", "latency", "n_params", "budget_tokens",
           "seconds"]


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


EVAL_BATCHES = 8  # ShortTrain's default is 32; 8 x 4 windows of 128 bytes keeps validation cheap on 2 cores


def _init_worker() -> None:
    global _PROXY, _PRED
    import torch

    from flashsearch.proxies.latency.roofline import RooflinePredictor
    from flashsearch.proxies.quality.short_train import ShortTrain

    torch.set_num_threads(1)
    _PROXY = ShortTrain(threads=1, eval_batches=EVAL_BATCHES)
    _PRED = RooflinePredictor(device="h100")


def evaluate(job: tuple[dict, str, int]) -> dict:
    """Real ShortTrain loss (val bits/byte) + roofline latency of one genome (runs in a worker)."""
    params, origin, tokens = job
    if _PROXY is None:
        _init_worker()
    g = SPACE.decode(params)
    t0 = time.perf_counter()
    res = _PROXY.evaluate(g, Budget(tokens=tokens))
    secs = time.perf_counter() - t0
    return {"genome_id": g.id, "genome_json": g.to_json(), "params_json": json.dumps(params, sort_keys=True),
            "origin": origin, "loss": float(res.loss), "latency": float(_PRED.predict(g, WORKLOAD)),
            "n_params": int(g_params(g)), "budget_tokens": int(tokens), "seconds": round(secs, 3)}


def g_params(g: Genome) -> int:
    """Non-embedding parameter count of the full-size genome (matrices only, as in searcher_benchmark)."""
    d, q, kv = g.d_model, g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim
    total = 0
    for op in g.layer_types:
        if op == "ffn":
            total += 3 * d * g.ffn_hidden
        elif op in ("attention", "swa"):
            total += 2 * d * q + 2 * d * kv
        elif op == "mamba2":
            total += 6 * d * d
        else:
            total += 4 * d * d
    return total


def load_evaluations(path: str | Path = DEFAULT_OUT) -> pd.DataFrame:
    """Read and validate the collected CSV: required columns, finite values, unique ids, ids match genomes."""
    import numpy as np

    df = pd.read_csv(path, comment="#")
    missing = [c for c in ("genome_id", "genome_json", "loss", "latency", "budget_tokens") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    if df.empty:
        raise ValueError(f"{path}: no rows")
    for c in ("loss", "latency"):
        if not np.isfinite(df[c].to_numpy(dtype=float)).all():
            raise ValueError(f"{path}: non-finite values in column {c!r}")
    if df["genome_id"].duplicated().any():
        raise ValueError(f"{path}: duplicate genome ids")
    if df["budget_tokens"].nunique() != 1:
        raise ValueError(f"{path}: mixed budgets {sorted(df['budget_tokens'].unique())}")
    for gid, gj in zip(df["genome_id"], df["genome_json"]):
        if Genome.from_json(gj).id != gid:
            raise ValueError(f"{path}: genome_id {gid} does not match its genome_json")
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=160, help="distinct genomes to evaluate")
    ap.add_argument("--tokens", type=int, default=12288, help="ShortTrain budget.tokens per genome")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="genome sampling seed (the proxy's seed stays 0)")
    ap.add_argument("--measure", type=int, default=0, help="only time this many genomes at a few budgets")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--eval-batches", type=int, default=EVAL_BATCHES, help="ShortTrain eval_batches")
    args = ap.parse_args()
    globals()["EVAL_BATCHES"] = args.eval_batches

    genomes = sample_genomes(args.n, args.seed)
    if args.measure:
        _init_worker()
        for tokens in (8192, 12288, 16384):
            for p, o in genomes[:args.measure]:
                r = evaluate((p, o, tokens))
                print(f"tokens {tokens}: {SPACE.decode(p).n_layers:2d} layers d={p['d_model']}: "
                      f"{r['seconds']:.2f} s loss {r['loss']:.4f}", flush=True)
        return

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t0 = time.perf_counter()
    jobs = [(p, o, args.tokens) for p, o in genomes]
    with mp.get_context("fork").Pool(args.workers, initializer=_init_worker) as pool:
        for i, r in enumerate(pool.imap_unordered(evaluate, jobs), 1):
            rows.append(r)
            el = time.perf_counter() - t0
            print(f"[{i}/{len(jobs)}] {r['genome_id'][:10]} loss {r['loss']:.4f} lat {r['latency']:.2f}s "
                  f"{r['seconds']:.1f}s  elapsed {el:.0f}s eta {el / i * (len(jobs) - i):.0f}s", flush=True)
            if i % 20 == 0:  # partial saves: an interrupted collection keeps what it has
                pd.DataFrame(rows, columns=COLUMNS).to_csv(out, index=False)
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values("genome_id").reset_index(drop=True)
    df.to_csv(out, index=False)
    meta = {"command": "python experiments/collect_evaluations.py " + " ".join(sys.argv[1:]),
            "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}",
            "proxy": f"ShortTrain(eval_batches={EVAL_BATCHES}, threads=1), otherwise defaults (width_divisor 16, seq_len 128, "
                     f"batch 4, lr 3e-3, seed 0, corpus {DEFAULT_CORPUS})",
            "budget_tokens": args.tokens, "workers": args.workers, "genomes": len(df),
            "latency": "roofline h100, bf16, batch 1, prompt 128, 8192 decode tokens",
            "space": "search_spaces/hybrid_1b.yaml (staged; attention/mamba2/deltanet)",
            "wall_seconds": round(time.perf_counter() - t0, 1)}
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
