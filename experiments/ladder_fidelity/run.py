"""Ladder fidelity: how well do the multi-fidelity rungs rank architectures the way the top rung does, and which
front members would the promotion rule keep?

Trains each genome through search_spaces/hybrid_1b.yaml's ladder exactly as a multi-fidelity search does (rung 0,
then rung 1 and rung 2 continued from the rung checkpoints; warmup-stable-decay; the YAML's proxy, seed 0): 24
genomes drawn uniformly from the space (seed 0) plus the YAML's 4 seed architectures and the Flash-1B and Gated
DeltaNet + FFN references, with proxy seed 0 (the search's) and seed 1. Reports, against the top rung: Spearman /
Kendall / top-5 overlap (bootstrap 5-95% interval) of each lower rung and of two zero-cost baselines (non-embedding
parameter count, predicted latency); and, for the promotion rule (search/rungs.py) run on these results as if they
had arrived in this order, how many members of the top rung's Pareto front (every genome trained to the top) the
ladder would have promoted to the top.

    python -m experiments run ladder_fidelity          # ~70 min on 2 CPU cores (143 CPU-min of trainings)
    python -m experiments run ladder_fidelity --quick  # smoke run

Writes ladder_fidelity.{csv,md} to `out`; the CSV caches each genome's trainings (a rerun trains what is missing;
experiments/proxy_fidelity reads and extends the same cache).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path


from flashsearch.errors import FlashsearchError
from flashsearch.pareto import pareto_mask

from experiments.lib.common import default_proxy, search_ladder
from experiments.lib.ladder import replay_promotions, run_ladders, study_genomes, zero_cost_baselines
from experiments.lib.output import header, write_text
from experiments.lib.ranking import rank_agreement

@dataclass(frozen=True)
class Settings:
    config: str              # space, ladder and proxy
    genomes: int             # uniform draws (the reference architectures come on top)
    seeds: tuple[int, ...]   # proxy seeds; the first is the search's, the others measure agreement across seeds
    train: bool              # false: report from the cached trainings only
    scale: float             # multiply every rung's tokens by this
    workers: int             # parallel trainings
    out: str                 # folder for the CSV (the ladder cache) and markdown


def main(args: Settings, meta: dict) -> None:
    config = args.config
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from flashsearch.config import load_config

    cfg = load_config(config)
    ladder = search_ladder(cfg)
    if ladder is None:
        raise FlashsearchError(f"ladder_fidelity: {config} is not a multi-fidelity search")
    ladder = dataclasses.replace(ladder, tokens=tuple(max(1, round(t * args.scale)) for t in ladder.tokens))
    kwargs, _ = default_proxy(config)
    genomes = study_genomes(config, args.genomes, 0)
    seeds = list(args.seeds)
    every = run_ladders(genomes, kwargs, ladder.tokens, seeds, out / "ladder_fidelity.csv", args.workers,
                        train=args.train)
    order = [g.id for g, _ in genomes]
    rows = every[every["seed"] == seeds[0]].set_index("genome_id").loc[order]
    others = {s: every[every["seed"] == s].set_index("genome_id").reindex(order) for s in seeds[1:]}
    rows = rows.join(zero_cost_baselines(config, [g for g, _ in genomes]))
    top = len(ladder.tokens) - 1
    ref = rows[f"loss{top}"].to_numpy()

    lines = [header("Ladder fidelity: the multi-fidelity rungs against the top rung", meta, started,
                    float(every[[f"cpu{k}" for k in range(top + 1)]].to_numpy().sum())),
             f"Genomes: {len(rows)} ({args.genomes} drawn uniformly from `{config}`'s space with seed 0, plus its "
             f"{len(cfg.search.seeds)} seed architectures and {len(rows) - args.genomes - len(cfg.search.seeds)} more "
             "reference architectures). Each trained through the ladder "
             f"{list(ladder.tokens)} tokens as a multi-fidelity search trains a promoted candidate (rung k+1 "
             "continues from rung k's checkpoint; warmup-stable-decay), with the YAML's proxy (ShortTrain defaults, "
             "seed 0) on the default corpus (wikipedia). Reference: the top rung. Intervals: bootstrap 5-95% over "
             "genomes.", "",
             "| ranking by | Spearman vs top rung | Kendall | top-5 overlap |", "|---|---|---|---|"]
    for name, values in ([(f"rung {k} ({ladder.tokens[k]:,} tokens)", rows[f"loss{k}"].to_numpy())
                          for k in range(top)]
                         + [("non-embedding parameters (more = better)", -rows["params"].to_numpy(dtype=float)),
                            ("predicted latency (slower = better)", -rows["latency"].to_numpy())]):
        ag = rank_agreement(values, ref, k=5)
        lines.append(f"| {name} | {ag.spearman:.3f} [{ag.spearman_ci[0]:.2f}, {ag.spearman_ci[1]:.2f}] | "
                     f"{ag.kendall:.3f} | {ag.top_k_overlap * ag.k:.0f}/{ag.k} |")
    for s, other in others.items():
        # Across seeds: a continued rung shares its trajectory with the top rung of the same seed, which inflates
        # the same-seed figures above; another seed's top rung has nothing in common with it but the data.
        ok = other[f"loss{top}"].notna().to_numpy()
        if ok.sum() < 3:
            lines += ["", f"Seed {s}: only {int(ok.sum())} genomes trained so far; no cross-seed figures."]
            continue
        lines += ["", f"Across proxy seeds (seed {seeds[0]} vs seed {s}'s top rung, {int(ok.sum())} genomes): the "
                  "same-seed figures above share a training trajectory; these do not.", "",
                  f"| ranking by (seed {seeds[0]}) | Spearman vs seed {s}'s top rung | Kendall | top-5 overlap |",
                  "|---|---|---|---|"]
        for k in range(top + 1):
            label = f"rung {k} ({ladder.tokens[k]:,} tokens)" + (" = noise ceiling" if k == top else "")
            ag = rank_agreement(rows[f"loss{k}"].to_numpy()[ok], other[f"loss{top}"].to_numpy()[ok], k=5)
            lines.append(f"| {label} | {ag.spearman:.3f} [{ag.spearman_ci[0]:.2f}, {ag.spearman_ci[1]:.2f}] | "
                         f"{ag.kendall:.3f} | {ag.top_k_overlap * ag.k:.0f}/{ag.k} |")

    # The promotion rule replayed on these results, arriving in this order (random draws, then the seeds).
    ids = list(rows.index)
    results = replay_promotions(rows, ladder)
    reached = {r.candidate for r in results if r.rung == top}
    oracle = pareto_mask(rows[["latency", f"loss{top}"]].to_numpy())
    oracle_front = {c for c, m in enumerate(oracle) if m}
    kept = reached & oracle_front
    cpu_ladder = sum(float(rows.loc[ids[r.candidate], f"cpu{r.rung}"]) for r in results)
    cpu_all = float(rows[[f"cpu{k}" for k in range(top + 1)]].to_numpy().sum())
    lines += ["", f"Promotion rule replayed (eta {ladder.eta}, candidates arriving in table order): "
              f"{len(reached)} of {len(ids)} reach the top rung; the top rung's Pareto front over all {len(ids)} "
              f"genomes has {len(oracle_front)} members, of which the ladder promotes {len(kept)} to the top "
              f"({', '.join(rows.iloc[sorted(kept)]['name']) or 'none'} kept; missed: "
              + ", ".join(f"{rows.iloc[c]['name']} ({rows.iloc[c]['layers']} layers, d {rows.iloc[c]['d_model']})"
                          for c in sorted(oracle_front - kept)) + "). "
              f"CPU: {cpu_ladder / 60:.1f} CPU-min for the ladder's trainings vs {cpu_all / 60:.1f} for training "
              "every genome through the top rung.", "",
              "Per genome (losses in bits/byte):", "",
              "| genome | kind | layers | d_model | " + " | ".join(f"rung {k}" for k in range(top + 1))
              + " | latency (s) | non-emb. params (M) | on top-rung front |",
              "|---|---|---|---|" + "---|" * (top + 1) + "---|---|---|"]
    for c, gid in enumerate(ids):
        r = rows.loc[gid]
        lines.append(f"| {gid} | {r['name']} | {r['layers']} | {r['d_model']} | "
                     + " | ".join(f"{r[f'loss{k}']:.3f}" for k in range(top + 1))
                     + f" | {r['latency']:.2f} | {r['params'] / 1e6:.0f} | {'yes' if c in oracle_front else ''} |")
    print(write_text(out / "ladder_fidelity.md", "\n".join(lines) + "\n").read_text())

