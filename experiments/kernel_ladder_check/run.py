"""Does the proxy's fast path with the compiled CPU kernels train like the path the fidelity studies used?

Retrains the first `jobs` (genome, seed) ladders of ladder_fidelity.csv - trained 2026-12-01 by the fast path of
that day (bf16 projection GEMMs, 16-token chunks, the torch forms of every core) - with today's fast path (the
same plus the compiled CPU kernels of kernels/cpu.py): same genomes, proxy seed, ladder, corpus and schedule. It
reports the CPU seconds of both (one core each; the old ones were measured on another day, so this ratio is not
a side-by-side measurement: experiments/proxy_speed is) and how the two paths' losses rank the genomes at every
rung, next to the cross-seed agreement of the old path on the same genomes (seed 0 vs seed 1), the noise a
ranking must live with anyway.

    python -m experiments run kernel_ladder_check     # 24 ladders, ~25 min on 2 cores (cached in the CSV)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


from flashsearch.config import load_config
from flashsearch.errors import FlashsearchError

from experiments.lib.common import default_proxy, search_ladder
from experiments.lib.ladder import ladder_key, run_ladders, study_genomes
from experiments.lib.output import header, write_text
from experiments.lib.ranking import rank_agreement


@dataclass(frozen=True)
class Settings:
    config: str       # space, ladder and proxy
    reference: str    # ladders trained by the earlier path (ladder_fidelity's cache, read by its ladder column)
    jobs: int         # how many of its seed-0 ladders to retrain
    workers: int      # parallel trainings
    out: str          # folder for the CSV and markdown


def main(args: Settings, meta: dict) -> None:
    started = time.perf_counter()

    cfg = load_config(args.config)
    base = search_ladder(cfg)
    tokens = list(base.tokens) if base else [int(cfg.budget.tokens)]
    kwargs, _ = default_proxy(args.config)
    seed = int(kwargs.get("seed", 0))
    old = pd.read_csv(args.reference)
    old = old[old["ladder"] == ladder_key(tokens)]
    wanted = list(dict.fromkeys(old[old["seed"] == seed]["genome_id"]))[:args.jobs]
    by_id = {g.id: (g, kind) for g, kind in study_genomes(args.config, 24, 0)}
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise FlashsearchError(f"{args.reference}: genomes {missing} are not the study's draws from {args.config}")
    new = run_ladders([by_id[i] for i in wanted], kwargs, tokens, [seed], Path(args.out) / "kernel_ladder_check.csv",
                      args.workers)
    rungs = range(len(tokens))
    both = new.merge(old[old["seed"] == seed], on=["genome_id", "seed", "ladder"], suffixes=("_new", "_old"))
    other = old[old["seed"] == seed + 1].set_index("genome_id")
    both = both[both["genome_id"].isin(other.index)]
    cpu_new = sum(both[f"cpu{k}_new"] for k in rungs)
    cpu_old = sum(both[f"cpu{k}_old"] for k in rungs)

    lines = [header("Fast path with the CPU kernels vs the fast path of the fidelity studies: same ladders",
                    meta, started, float(cpu_new.sum()), "CPU"),
             f"- {len(both)} (genome, seed {seed}) ladders of `{args.reference}` (trained 2026-12-01, before the "
             f"kernels), retrained now; ladder {tokens} bytes; proxy {kwargs}",
             f"- CPU seconds per ladder (all rungs, one core): before {cpu_old.mean():.1f}, now {cpu_new.mean():.1f}"
             f" (total {cpu_old.sum() / 60:.1f} -> {cpu_new.sum() / 60:.1f} CPU-min, {cpu_old.sum() / cpu_new.sum():.2f}x"
             f" less; per ladder median {(cpu_old / cpu_new).median():.2f}x). Not side by side: the earlier runs were"
             " timed on another day, under other load (`proxy_speed` is the side-by-side measurement).\n",
             "| rung | bytes | Spearman now vs before | Kendall | mean abs loss change (bits/byte) | "
             "cross-seed Spearman before (seed 0 vs 1) |",
             "|---|---|---|---|---|---|"]
    for k in rungs:
        a = rank_agreement(both[f"loss{k}_new"], both[f"loss{k}_old"], k=5)
        ceiling = rank_agreement(both[f"loss{k}_old"], other.loc[both["genome_id"], f"loss{k}"].to_numpy(), k=5)
        change = (both[f"loss{k}_new"] - both[f"loss{k}_old"]).abs().mean()
        lines.append(f"| {k} | {tokens[k]:,} | {a.spearman:.3f} [{a.spearman_ci[0]:.2f}, {a.spearman_ci[1]:.2f}] | "
                     f"{a.kendall:.3f} | {change:.3f} | {ceiling.spearman:.3f} |")
    lines.append("\nThe kernels compute the torch forms' maths in another summation order, so the two paths part only "
                 "by rounding, which training amplifies; a ranking that moves less than under a change of seed is "
                 "as trustworthy as before.\n")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    write_text(out / "kernel_ladder_check.md", text)
    print(text)

