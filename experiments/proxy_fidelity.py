"""Proxy fidelity: does the default short-training proxy rank architectures the way longer training does?

Draws genomes uniformly from search_spaces/hybrid_1b.yaml's space, trains each with the proxy that YAML
configures (the `default` rung) and with 8x its tokens (the `reference`), and reports Spearman, Kendall and
top-5 overlap between the two rankings (paper: Spearman 0.888 between short and full training). The ladder
trains the same genomes with cheaper and dearer proxies (fewer/more tokens, a wider model, two seeds
averaged) and reports each rung's fidelity against the reference next to its CPU cost, so a user can pick a
point.

    python experiments/proxy_fidelity.py                       # 20 genomes, ~1 h on 2 CPU cores
    python experiments/proxy_fidelity.py --genomes 4 --scale 0.1 --out /tmp/pf   # a 2-minute smoke run
    python experiments/proxy_fidelity.py --genomes 40 --scale 8 --device cuda --workers 1

Writes proxy_fidelity.{csv,md,png} to --out. Training rows are cached in the CSV: rerunning the same command
after an interruption only trains what is missing.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flashsearch.studies.common import add_common_args, default_proxy, describe_proxy, sample_genomes
from flashsearch.studies.jobs import TrainJob, run_jobs
from flashsearch.archive import write_text_atomic
from flashsearch.studies.output import header, pyplot, save_figure
from flashsearch.proxies.quality.corpus import DEFAULT_CORPUS
from flashsearch.studies.ranking import rank_agreement

FIDELITY_BAR = 0.8  # the bar for the demo's default proxy


@dataclass(frozen=True)
class Rung:
    name: str
    token_mult: float          # x the YAML's budget.tokens
    width_divisor: int | None  # None = the YAML's
    seeds: tuple[int, ...]     # losses averaged over these proxy seeds


REFERENCE = Rung("reference (8x tokens)", 8.0, None, (0,))
LADDER = (
    Rung("0.25x tokens", 0.25, None, (0,)),
    Rung("0.5x tokens", 0.5, None, (0,)),
    Rung("default", 1.0, None, (0,)),
    Rung("2x tokens", 2.0, None, (0,)),
    Rung("0.25x tokens, 2x wider", 0.25, 8, (0,)),
    Rung("0.5x tokens, 2 seeds", 0.5, None, (0, 1)),
    Rung("4x tokens", 4.0, None, (0,)),
    Rung("6x tokens", 6.0, None, (0,)),
)


def rung_jobs(rung: Rung, genomes, base_kwargs: dict, base_tokens: int, args) -> list[TrainJob]:
    tokens = max(1, int(round(base_tokens * rung.token_mult * args.scale)))
    jobs = []
    for seed in rung.seeds:
        kw = {**base_kwargs, "seed": seed, "device": args.device}
        if rung.width_divisor is not None:
            kw["width_divisor"] = rung.width_divisor
        wd = kw.get("width_divisor", 16)
        for g in genomes:
            # the key names the training itself, so rungs that share a training share its row
            jobs.append(TrainJob(key=f"t{tokens}-w{wd}-s{seed}-{args.device}|{g.id}", genome=g, tokens=tokens,
                                 proxy=kw, tags={"layers": g.n_layers, "d_model": g.d_model}))
    return jobs


def rung_losses(rows: pd.DataFrame, jobs: list[TrainJob], genomes) -> tuple[np.ndarray, float]:
    """Per-genome loss averaged over the rung's seeds, and the rung's mean CPU seconds per genome."""
    by_key = rows.set_index("key")
    sub = by_key.loc[[j.key for j in jobs]]
    loss = sub.groupby("genome_id")["loss"].mean().reindex([g.id for g in genomes]).to_numpy()
    return loss, float(sub["seconds"].sum()) / len(genomes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="search_spaces/hybrid_1b.yaml", help="space + default proxy")
    ap.add_argument("--genomes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="genome sampling seed")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--base-tokens", type=int, default=49_152,
                    help="the ladder's 1x (the demo's budget when this study set its default; the YAML now holds "
                         "the study's verdict, so the ladder does not move with it)")
    add_common_args(ap)
    args = ap.parse_args()
    args.top_k = min(args.top_k, args.genomes)
    started = time.perf_counter()
    out = Path(args.out)

    genomes = sample_genomes(args.config, args.genomes, args.seed)
    base_kwargs, _ = default_proxy(args.config)
    base_tokens = args.base_tokens
    plan = {r: rung_jobs(r, genomes, base_kwargs, base_tokens, args) for r in (REFERENCE, *LADDER)}
    unique = {j.key: j for jobs in plan.values() for j in jobs}
    print(f"proxy fidelity: {len(genomes)} genomes, {len(unique)} trainings, {args.workers} workers", flush=True)
    rows = run_jobs(list(unique.values()), out / "proxy_fidelity.csv", args.workers, "fidelity")
    failed = rows[rows["error"] != ""]
    keep = [g for g in genomes if g.id not in set(failed["genome_id"])]
    if len(keep) < len(genomes):
        print(f"dropping {len(genomes) - len(keep)} genomes with a failed training", flush=True)

    ref, ref_cost = rung_losses(rows, plan[REFERENCE], keep)
    default_loss, default_cost = rung_losses(rows, plan[LADDER[2]], keep)
    table, ladder_points = [], []
    for rung in LADDER:
        loss, cost = rung_losses(rows, plan[rung], keep)
        ag = rank_agreement(loss, ref, k=args.top_k)
        tokens = plan[rung][0].tokens
        wd = plan[rung][0].proxy.get("width_divisor", 16)
        table.append(f"| {rung.name} | {tokens:,} | d/{wd} | {len(rung.seeds)} | {ag.spearman:.3f} "
                     f"[{ag.spearman_ci[0]:.2f}, {ag.spearman_ci[1]:.2f}] | {ag.kendall:.3f} | "
                     f"{ag.top_k_overlap * ag.k:.0f}/{ag.k} | {cost:.0f} | {cost / default_cost:.2f}x |")
        ladder_points.append((rung.name, cost, ag.spearman, ag.spearman_ci))
    default_ag = rank_agreement(default_loss, ref, k=args.top_k)
    passing = sorted((c, n) for n, c, s, _ in ladder_points if round(s, 3) >= FIDELITY_BAR)
    verdict = (f"The default proxy's Spearman is {default_ag.spearman:.3f} "
               + (f">= {FIDELITY_BAR}: it stays the default." if round(default_ag.spearman, 3) >= FIDELITY_BAR else
                  f"< {FIDELITY_BAR}. Cheapest rung at or above the bar: "
                  + (f"{passing[0][1]} ({passing[0][0] / default_cost:.2f}x the default's cost)." if passing
                     else "none; a longer proxy than this ladder holds is needed.")))

    md = header("Proxy fidelity", started, float(rows["seconds"].sum())) + f"""
Genomes: {len(keep)} drawn uniformly from `{args.config}` (seed {args.seed}). Default proxy: that YAML's
`quality` ({describe_proxy(base_kwargs)}) at {base_tokens:,} tokens (`--base-tokens`; the demo's budget before
this study){' x scale ' + str(args.scale) if args.scale != 1 else ''}.
Reference: the same proxy with {REFERENCE.token_mult:g}x the tokens ({plan[REFERENCE][0].tokens:,};
{ref_cost:.0f} CPU-s per genome). Losses are validation bits per byte on the `{base_kwargs.get('corpus') or DEFAULT_CORPUS}` corpus; lower is better.
Spearman's interval is a 5-95% bootstrap over genomes. Cost is CPU seconds per genome (one core each).

| rung | tokens | width | seeds | Spearman vs reference | Kendall | top-{args.top_k} overlap | CPU-s / genome | cost vs default |
|---|---|---|---|---|---|---|---|---|
""" + "\n".join(table) + f"""

{verdict}

![proxy fidelity](proxy_fidelity.png)
"""
    write_text_atomic(out / "proxy_fidelity.md", md)
    plot(out / "proxy_fidelity.png", default_loss, ref, ladder_points, default_ag)
    print(md, flush=True)


def plot(path: Path, default_loss, ref, ladder_points, default_ag) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.3))
    a1.scatter(default_loss, ref, s=22)
    a1.set_xlabel("default proxy loss (bits/byte)")
    a1.set_ylabel("reference loss, 8x tokens (bits/byte)")
    a1.set_title(f"default vs reference: Spearman {default_ag.spearman:.2f}, Kendall {default_ag.kendall:.2f}")
    for name, cost, rho, (lo, hi) in ladder_points:
        a2.errorbar([cost], [rho], yerr=[[max(0.0, rho - lo)], [max(0.0, hi - rho)]], fmt="o", capsize=3)
        a2.annotate(name, (cost, rho), textcoords="offset points", xytext=(5, 4), fontsize=8)
    a2.axhline(FIDELITY_BAR, color="grey", ls="--", lw=1)
    a2.set_xscale("log")
    a2.set_xlabel("CPU seconds per genome")
    a2.set_ylabel("Spearman vs reference")
    a2.set_title("proxy ladder: fidelity vs cost")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
