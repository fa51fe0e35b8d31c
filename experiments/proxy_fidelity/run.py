"""Proxy fidelity: do the search's rungs rank architectures the way 16x longer training does?

Genomes: 24 drawn uniformly from search_spaces/hybrid_1b.yaml's space (seed 0) plus the reference architectures
(the YAML's 4 seeds, the Flash-1B pattern, Gated DeltaNet + FFN). Each is trained
- through the YAML's multi-fidelity ladder exactly as the search trains a promoted candidate (proxy seed 0, the
  search's), and again with proxy seed 1 (the noise ceiling: how well the proxy agrees with itself);
- once as the reference: 16x the screening rung's tokens, proxy seed 2, one plain (cosine) run, on data the
  short runs draw from too but without repeating it (the reference reads a few percent of the corpus).
Reports, against the reference, Spearman / Kendall / top-5 overlap with bootstrap 5-95% intervals for every rung,
for two seeds averaged, and for the zero-cost baselines a user would try first (non-embedding parameter count,
the LiteTransformerSearch proxy; predicted latency), with each row's CPU cost; a paired bootstrap says whether
the default beats the best baseline.

    python -m experiments run proxy_fidelity            # ~100 CPU-min of trainings; the ladders are shared
                                                        # with ladder_fidelity's cache
    python -m experiments run proxy_fidelity --quick    # a few-minute smoke run
    python -m experiments run proxy_fidelity scale=8 device=cuda workers=1   # bigger, where a GPU is lent

Writes proxy_fidelity.{csv,md,png} to `out` and extends the ladder cache (`ladder_cache`, ladder_fidelity's
CSV). Every training is cached in those CSVs the moment it finishes: rerunning after an interruption only trains
what is missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flashsearch.errors import FlashsearchError
from flashsearch.proxies.quality.short_train import ShortTrain

from experiments.lib.common import default_proxy, describe_proxy, search_ladder
from experiments.lib.jobs import TrainJob, run_jobs, training_time
from experiments.lib.ladder import run_ladders, study_genomes, zero_cost_baselines
from experiments.lib.output import header, pyplot, save_figure, write_text
from experiments.lib.ranking import rank_agreement, spearman_gap

FIDELITY_BAR = 0.85  # the bar for the default (screening) rung against the >= 16x reference


def reference_jobs(genomes, kwargs: dict, tokens: int, seeds: list[int], device: str) -> list[TrainJob]:
    return [TrainJob(key=f"t{tokens}-w{kwargs.get('width_divisor', 16)}-s{s}-{device}|{g.id}", genome=g,
                     tokens=tokens, proxy={**kwargs, "seed": s, "device": device},
                     tags={"layers": g.n_layers, "d_model": g.d_model})
            for s in seeds for g in genomes]


def agreement_row(label: str, tokens: str, values, ref, k: int, cost: float | None, default_cost: float) -> str:
    ag = rank_agreement(values, ref, k=k)
    money = "0 (no training)" if cost is None else f"{cost:.0f} ({cost / default_cost:.1f}x)"
    return (f"| {label} | {tokens} | {ag.spearman:.3f} [{ag.spearman_ci[0]:.2f}, {ag.spearman_ci[1]:.2f}] | "
            f"{ag.kendall:.3f} [{ag.kendall_ci[0]:.2f}, {ag.kendall_ci[1]:.2f}] | "
            f"{ag.top_k_overlap * k:.0f}/{k} [{ag.top_k_ci[0] * k:.0f}, {ag.top_k_ci[1] * k:.0f}] | {money} |")


@dataclass(frozen=True)
class Settings:
    config: str                      # space, ladder and proxy
    genomes: int                     # uniform draws (the reference architectures come on top)
    reference_mult: float            # reference tokens / screening-rung tokens
    reference_seeds: tuple[int, ...]  # proxy seeds of the reference (two are averaged; their agreement is its
                                      # own noise ceiling)
    ceiling_genomes: int             # with one reference seed: this many of the cheapest genomes' references get
                                     # one more seed, for the reference's noise ceiling on that subset (0 = none)
    top_k: int
    ladder_cache: str                # the ladders' CSV, shared with ladder_fidelity
    scale: float                     # multiply every token budget by this
    device: str                      # cpu or cuda (ShortTrain's device)
    workers: int                     # parallel trainings
    out: str                         # folder for the reference CSV, markdown and figure


def main(args: Settings, meta: dict) -> None:
    started = time.perf_counter()
    out = Path(args.out)

    from flashsearch.config import load_config

    cfg = load_config(args.config)
    base = search_ladder(cfg)
    ladder = [max(1, int(round(t * args.scale))) for t in (base.tokens if base else (cfg.budget.tokens,))]
    kwargs, _ = default_proxy(args.config)
    kwargs["device"] = args.device
    genomes = study_genomes(args.config, args.genomes, 0)
    ids = [g.id for g, _ in genomes]
    k = min(args.top_k, len(genomes))
    search_seed = int(kwargs.get("seed", 0))
    ceiling_seed = search_seed + 1
    ref_seeds = list(args.reference_seeds)
    if {search_seed, ceiling_seed} & set(ref_seeds):
        raise FlashsearchError(f"proxy_fidelity: reference_seeds must differ from the ladders' proxy seeds "
                               f"{search_seed} and {ceiling_seed}")
    ref_tokens = int(round(args.reference_mult * ladder[0]))

    ladders = run_ladders(genomes, kwargs, ladder, [search_seed, ceiling_seed], args.ladder_cache, args.workers)
    jobs = reference_jobs([g for g, _ in genomes], kwargs, ref_tokens, ref_seeds, args.device)
    # The reference's own noise, on a subset: the cheapest genomes, with the next seed (a full second seed costs
    # as much as the first; reference_seeds=[2,3] does that and averages them).
    subset = [] if len(ref_seeds) > 1 else sorted(jobs, key=TrainJob.cost)[:max(0, args.ceiling_genomes)]
    extra_seed = max(ref_seeds + [search_seed, ceiling_seed]) + 1  # a seed no other training uses
    extra = reference_jobs([j.genome for j in subset], kwargs, ref_tokens, [extra_seed], args.device)
    every_ref = run_jobs(jobs + extra, out / "proxy_fidelity.csv", args.workers, "reference")
    refs = every_ref[every_ref["seed"].isin(ref_seeds)]
    failed = set(refs.loc[refs["error"] != "", "genome_id"])
    keep = [i for i in ids if i not in failed]
    if failed:
        print(f"dropping {len(failed)} genomes whose reference training failed", flush=True)

    top = len(ladder) - 1
    s0 = ladders[ladders["seed"] == search_seed].set_index("genome_id").loc[keep]
    s1 = ladders[ladders["seed"] == ceiling_seed].set_index("genome_id").loc[keep]
    ref_by_seed = {s: refs[refs["seed"] == s].set_index("genome_id")["loss"].loc[keep].to_numpy() for s in ref_seeds}
    ref = np.mean(list(ref_by_seed.values()), axis=0)
    base0 = zero_cost_baselines(args.config, [g for g, _ in genomes]).loc[keep]
    cum = {r: s0[[f"cpu{j}" for j in range(r + 1)]].sum(axis=1).mean() for r in range(top + 1)}  # rung r pays 0..r
    default_cost = float(cum[0])
    proxy = ShortTrain(**{key: v for key, v in kwargs.items() if key != "device"})
    corpus = int(proxy.corpus().train.numel())  # training bytes (one byte = one token)
    ladder_cpu = float(ladders[ladders["genome_id"].isin(keep)][[f"cpu{j}" for j in range(top + 1)]].to_numpy().sum())
    # Each genome's CPU per token through the ladder (mean over seeds), for reference rows written before experiments/lib/jobs.py
    # recorded process time: a genome's reference then costs its own rate times its tokens.
    cpu_cols = [f"cpu{j}" for j in range(top + 1)]
    genome_cpu_per_token = (ladders.assign(cpu=ladders[cpu_cols].sum(axis=1)).groupby("genome_id")["cpu"].mean()
                            / _ladder_tokens_trained(ladder, proxy.decay_fraction))
    per_token = ladder_cpu / (len(keep) * len(ladders["seed"].unique())
                              * _ladder_tokens_trained(ladder, proxy.decay_fraction))

    def cpu_of(rows: pd.DataFrame) -> float:
        seconds, clock = training_time(rows)
        if clock == "CPU":
            return seconds
        return float((rows["tokens"] * rows["genome_id"].map(genome_cpu_per_token)).sum())

    ref_cost = cpu_of(refs) / len(keep)
    if training_time(refs)[1] == "CPU":
        ref_cost_text = f"{ref_cost:.0f} CPU-s per genome"
    else:
        ref_cost_text = (f"{training_time(refs)[0] / len(keep):.0f} s per genome of wall time (these rows predate "
                         "the CSV's CPU column; wall exceeds CPU when trainings outnumber the cores); at each "
                         f"genome's measured ladder rate (on average {1 / per_token:,.0f} tokens per CPU-second) "
                         f"that is about {ref_cost:.0f} CPU-s")
    total_cpu = ladder_cpu + cpu_of(refs) + cpu_of(every_ref[every_ref["seed"] == extra_seed])
    lines = [header("Proxy fidelity: the search's rungs against 16x longer training", meta, started, total_cpu),
             f"- from nothing, this study is {total_cpu / 60:.0f} CPU-min of trainings, so about "
             f"{total_cpu / 60 / args.workers:.0f} min on {args.workers} idle cores ({args.workers} workers); the "
             "ladders are shared with ladder_fidelity's cache.",
             f"- **reference: {ref_tokens:,} tokens per genome = {args.reference_mult:g}x the default (screening) "
             f"rung's {ladder[0]:,}, proxy seed{'s' if len(ref_seeds) > 1 else ''} "
             f"{', '.join(map(str, ref_seeds))}** (the search trains with seed {search_seed}), one cosine-schedule "
             f"run{' per seed, averaged' if len(ref_seeds) > 1 else ''}; {ref_cost_text}. "
             f"It reads {ref_tokens:,} of the corpus's {corpus:,} training bytes ({100 * ref_tokens / corpus:.1f}%) "
             f"as random windows: about {50 * ref_tokens / corpus:.1f}% of what it reads overlaps an earlier "
             "window, so no data is repeated epoch-wise.",
             f"- genomes: {len(keep)} ({args.genomes} drawn uniformly from `{args.config}`'s space with seed 0, "
             "plus " + ", ".join(n for _, n in genomes if n != "random") + ")",
             f"- proxy: the YAML's `quality` ({describe_proxy(kwargs)}), byte-level, validation bits/byte on the "
             f"`{kwargs.get('corpus') or 'wikipedia'}` corpus's fixed validation split; lower is better."
             + (f" Every budget x scale {args.scale:g}." if args.scale != 1 else ""),
             f"- ladder: {ladder} tokens (rung 0 screens every candidate; promoted candidates continue to the next "
             "rung from a checkpoint; the front is ranked at the top rung). Cost: CPU seconds per genome, one core; "
             "a rung's cost includes the rungs below it, which it continues from.",
             "- intervals: bootstrap 5-95% over genomes (2000 resamples).", "",
             f"| ranking by | tokens | Spearman vs reference | Kendall | top-{k} overlap | CPU-s / genome (x default) |",
             "|---|---|---|---|---|---|"]
    for r in range(top + 1):
        role = " = default (screens every candidate)" if r == 0 else (" (the front)" if r == top else "")
        lines.append(agreement_row(f"rung {r}, seed {search_seed}{role}", f"{ladder[r]:,}",
                                   s0[f"loss{r}"].to_numpy(), ref, k, float(cum[r]), default_cost))
    two = (s0["loss0"].to_numpy() + s1["loss0"].to_numpy()) / 2
    lines.append(agreement_row(f"rung 0, seeds {search_seed} and {ceiling_seed} averaged", f"2 x {ladder[0]:,}",
                               two, ref, k, 2 * default_cost, default_cost))
    zero = {"non-embedding parameters (more = better)": -base0["params"].to_numpy(dtype=float),
            "predicted latency (slower = better)": -base0["latency"].to_numpy()}
    for name, values in zero.items():
        lines.append(agreement_row(name, "-", values, ref, k, None, default_cost))

    default = rank_agreement(s0["loss0"].to_numpy(), ref, k=k)
    best_name, best_values = max(zero.items(), key=lambda kv: rank_agreement(kv[1], ref, k=k).spearman)
    gap, (glo, ghi) = spearman_gap(s0["loss0"].to_numpy(), best_values, ref)
    reached = round(default.spearman, 3) >= FIDELITY_BAR
    lines += ["", f"**Default rung (rung 0, {ladder[0]:,} tokens): Spearman {default.spearman:.3f} "
              f"[{default.spearman_ci[0]:.2f}, {default.spearman_ci[1]:.2f}] against the {args.reference_mult:g}x "
              f"reference: the {FIDELITY_BAR} bar is {'reached' if reached else 'NOT reached'}.** "
              + _versus_baseline(best_name.split(" (")[0], gap, glo, ghi)]

    lines += ["", _front_recall(s0.join(base0), ref, base, names_of=dict((g.id, n) for g, n in genomes))]

    lines += ["", "Noise ceiling: how well each rung agrees with itself under another proxy seed (the most any proxy "
              "of that training can agree with a reference as noisy).", "",
              f"| rung | tokens | Spearman seed {search_seed} vs seed {ceiling_seed} | Kendall | top-{k} overlap |",
              "|---|---|---|---|---|"]
    for r in range(top + 1):
        ag = rank_agreement(s0[f"loss{r}"].to_numpy(), s1[f"loss{r}"].to_numpy(), k=k)
        lines.append(f"| rung {r} | {ladder[r]:,} | {ag.spearman:.3f} [{ag.spearman_ci[0]:.2f}, "
                     f"{ag.spearman_ci[1]:.2f}] | {ag.kendall:.3f} | {ag.top_k_overlap * k:.0f}/{k} |")
    if len(ref_seeds) > 1:
        ag = rank_agreement(ref_by_seed[ref_seeds[0]], ref_by_seed[ref_seeds[1]], k=k)
        lines.append(f"| reference | {ref_tokens:,} | {ag.spearman:.3f} [{ag.spearman_ci[0]:.2f}, "
                     f"{ag.spearman_ci[1]:.2f}] | {ag.kendall:.3f} | {ag.top_k_overlap * k:.0f}/{k} |")
    elif extra:
        lines += _reference_ceiling(every_ref, ref_seeds[0], extra_seed, [j.genome.id for j in extra], s0, top, k,
                                    ref_tokens, ref_cost * len(keep) / 60)

    lines += ["", "Per genome (bits/byte; params in millions, latency in seconds as the YAML predicts):", "",
              "| genome | kind | layers | d_model | " + " | ".join(f"rung {r}" for r in range(top + 1))
              + " | rung 0, seed 1 | reference | non-emb. params | latency |",
              "|---|---|---|---|" + "---|" * (top + 1) + "---|---|---|---|"]
    names = dict(zip(ids, (n for _, n in genomes)))
    for i, gid in enumerate(keep):
        row = s0.loc[gid]
        lines.append(f"| {gid} | {names[gid]} | {row['layers']} | {row['d_model']} | "
                     + " | ".join(f"{row[f'loss{r}']:.3f}" for r in range(top + 1))
                     + f" | {s1.loc[gid, 'loss0']:.3f} | {ref[i]:.3f} | {base0.loc[gid, 'params'] / 1e6:.0f} | "
                       f"{base0.loc[gid, 'latency']:.2f} |")
    lines += ["", "![proxy fidelity](proxy_fidelity.png)"]
    md = "\n".join(lines) + "\n"
    plot(out / "proxy_fidelity.png", s0, ref, ladder, cum, default, args.reference_mult)
    print(write_text(out / "proxy_fidelity.md", md).read_text(), flush=True)


def _front_recall(rows: pd.DataFrame, ref, ladder, names_of: dict) -> str:
    """What a search on these genomes would publish, next to the reference's own loss-latency front."""
    from flashsearch.pareto import pareto_mask

    from experiments.lib.ladder import replay_promotions

    if ladder is None:
        return ""
    top = len(ladder.tokens) - 1
    results = replay_promotions(rows, ladder)
    at_top = sorted({r.candidate for r in results if r.rung == top})
    lat = rows["latency"].to_numpy()
    ref_front = {i for i, m in enumerate(pareto_mask(np.column_stack([lat, ref]))) if m}
    published = {at_top[i] for i, m in enumerate(pareto_mask(np.column_stack(
        [lat[at_top], rows[f"loss{top}"].to_numpy()[at_top]]))) if m} if at_top else set()

    def label(i: int) -> str:
        return f"{names_of[rows.index[i]]} ({rows['layers'].iloc[i]} layers, d {rows['d_model'].iloc[i]})"

    return (f"**What a search would publish.** The promotion rule (search/rungs.py) replayed on these ladders, "
            f"genomes arriving in table order, takes {len(at_top)} of {len(rows)} to the top rung; its published "
            f"front (the top-rung front of those) has {len(published)} members, of which "
            f"{len(published & ref_front)} are on the reference's own loss-latency front of {len(ref_front)} "
            f"(reference loss vs predicted latency). Reference front: " + ", ".join(
                label(i) + (" [published]" if i in published else "") for i in sorted(ref_front)) + ".")


def _reference_ceiling(rows: pd.DataFrame, seed: int, other: int, ids: list[str], s0: pd.DataFrame, top: int,
                       k: int, tokens: int, full_cost_min: float) -> list[str]:
    """The reference against itself under another seed, on the subset trained twice, beside the top rung's
    agreement with it on the same subset (so the two numbers share their genomes)."""
    ok = rows[rows["error"] == ""]
    a = ok[ok["seed"] == seed].set_index("genome_id")["loss"]
    b = ok[ok["seed"] == other].set_index("genome_id")["loss"]
    ids = [i for i in ids if i in a.index and i in b.index and i in s0.index]
    if len(ids) < 3:
        return ["", f"The reference's own seed-to-seed agreement: only {len(ids)} genomes trained twice so far."]
    kk = min(k, len(ids))
    self_ag = rank_agreement(a.loc[ids].to_numpy(), b.loc[ids].to_numpy(), k=kk)
    top_ag = rank_agreement(s0.loc[ids, f"loss{top}"].to_numpy(), a.loc[ids].to_numpy(), k=kk)
    return [f"| reference, {len(ids)} cheapest genomes (seed {seed} vs {other}) | {tokens:,} | {self_ag.spearman:.3f} "
            f"[{self_ag.spearman_ci[0]:.2f}, {self_ag.spearman_ci[1]:.2f}] | {self_ag.kendall:.3f} | "
            f"{self_ag.top_k_overlap * kk:.0f}/{kk} |", "",
            f"On those {len(ids)} genomes the top rung ranks the seed-{seed} reference at Spearman "
            f"{top_ag.spearman:.3f} [{top_ag.spearman_ci[0]:.2f}, {top_ag.spearman_ci[1]:.2f}]. A second reference "
            f"seed for every genome (`reference_seeds=[{seed},{other}]`, averaged) costs another "
            f"{full_cost_min:.0f} CPU-min."]


def _versus_baseline(name: str, gap: float, lo: float, hi: float) -> str:
    where = f"{gap:+.3f} Spearman (paired bootstrap [{lo:+.2f}, {hi:+.2f}])"
    if lo > 0:
        return f"It beats the better zero-cost baseline ({name}) by {where}, an interval clear of zero."
    if gap > 0:
        return (f"It is ahead of the better zero-cost baseline ({name}) by {where}, but that interval includes "
                "zero: not a clear win.")
    return f"It does NOT beat the better zero-cost baseline ({name}): {where}."


def _ladder_tokens_trained(ladder: list[int], decay_fraction: float) -> float:
    """Tokens one genome trains through the ladder: each rung continues from where the one below began its decay
    (the last decay_fraction of its steps; proxies/quality/short_train.py), so it retrains that rung's decay."""
    return ladder[0] + sum(t - (1.0 - decay_fraction) * prev for prev, t in zip(ladder, ladder[1:]))


def plot(path: Path, s0: pd.DataFrame, ref, ladder, cum, default, mult: float) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.3))
    a1.scatter(s0["loss0"], ref, s=22)
    a1.set_xlabel(f"rung 0 loss, {ladder[0]:,} tokens (bits/byte)")
    a1.set_ylabel(f"reference loss, {mult:g}x tokens (bits/byte)")
    a1.set_title(f"default vs reference: Spearman {default.spearman:.2f}, Kendall {default.kendall:.2f}")
    for r in range(len(ladder)):
        ag = rank_agreement(s0[f"loss{r}"].to_numpy(), ref)
        lo, hi = ag.spearman_ci
        a2.errorbar([cum[r]], [ag.spearman], yerr=[[max(0.0, ag.spearman - lo)], [max(0.0, hi - ag.spearman)]],
                    fmt="o", capsize=3)
        a2.annotate(f"rung {r} ({ladder[r]:,})", (cum[r], ag.spearman), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    a2.axhline(FIDELITY_BAR, color="grey", ls="--", lw=1)
    a2.set_xscale("log")
    a2.set_xlabel("CPU seconds per genome (rungs below included)")
    a2.set_ylabel("Spearman vs reference")
    a2.set_title("the ladder: fidelity vs cost")
    save_figure(fig, path)

