"""Proxy fidelity: does the score the search publishes rank architectures the way 4x longer training does?

Genomes: drawn uniformly from search_spaces/hybrid_1b.yaml's space (seed 0; the tuning studies draw with other
seeds and check they share no genome) plus the reference architectures (the YAML's seeds, the Flash-1B pattern,
Gated DeltaNet + FFN). Each is trained
- through the YAML's multi-fidelity ladder exactly as the search trains a promoted candidate (rung k+1 continues
  from rung k's checkpoint), with proxy seed 0 (the search's) and again with seed 1 (the noise ceiling);
- once with the top rung's tokens in one plain warmup-cosine run (seed 0): what the ladder is measured against;
- once as the reference: reference_mult x the top rung's tokens (>= 4x), another proxy seed, warmup-cosine, on
  random windows of the training split (a few percent of it, so nothing is repeated epoch-wise); the cheapest
  `ceiling_genomes` get a second reference seed, the reference's own noise ceiling.
Reports, against the reference, Spearman / Kendall / top-5 overlap with bootstrap 5-95% intervals for every rung,
the plain run, the log-budget extrapolation of the last two rungs, the zero-cost baselines (non-embedding
parameters, predicted latency) and the byte n-gram baselines (unigram to trigram count models of the training
split, scored on the same validation text); the cost of each; and what a search would publish. Writes the summary
tools read to `summary` (experiments/results/proxy_fidelity.json).

    python -m experiments run proxy_fidelity            # ~170 CPU-min of trainings on the default ladder
    python -m experiments run proxy_fidelity --quick    # a few-minute smoke run
    python -m experiments run proxy_fidelity scale=4 device=cuda workers=1   # bigger, where a GPU is lent

Every training is cached in the CSVs next to the results the moment it finishes: rerunning after an interruption
only trains what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flashsearch.errors import FlashsearchError

from experiments.lib.common import describe_proxy, study_ladder
from experiments.lib.jobs import TrainJob, run_jobs, training_time
from experiments.lib.ladder import replay_promotions, run_ladders, study_genomes, zero_cost_baselines
from experiments.lib.ngram import ORDERS, Ngram
from experiments.lib.output import header, pyplot, save_figure, write_text
from experiments.lib.ranking import rank_agreement, spearman_gap

FIDELITY_BAR = 0.85      # the bar for the published score against the >= 4x reference
BASELINE_MARGIN = 0.3    # ... and how far above the better zero-cost baseline it must be
NGRAM_MARGIN = 0.5       # the top rung's median must sit this many bits/byte below the byte trigram


@dataclass(frozen=True)
class Settings:
    config: str                      # space, ladder and proxy
    genomes: int                     # uniform draws (the reference architectures come on top)
    reference_mult: float            # reference tokens / top-rung tokens
    reference_seed: int              # the reference's proxy seed (the ladders use the search's seed and the next)
    ceiling_genomes: int             # this many of the cheapest genomes get a second reference seed (0 = none)
    top_k: int
    scale: float                     # multiply every token budget by this
    device: str                      # cpu or cuda (ShortTrain's device)
    workers: int                     # parallel trainings
    out: str                         # folder for the CSVs, markdown and figure
    summary: str                     # the machine-readable summary (JSON; its keys are a contract)


def extrapolate(lower: np.ndarray, top: np.ndarray, t_lower: int, t_top: int, t_target: int) -> np.ndarray:
    """The loss at t_target tokens on the line in log-budget through (t_lower, lower) and (t_top, top)."""
    return top + (top - lower) * math.log(t_target / t_top) / math.log(t_top / t_lower)


def ngram_baselines(proxy: Any) -> tuple[dict[str, float], dict[str, float]]:
    """(byte, token) n-gram baselines: bits per byte of count models of the proxy's training split on the exact
    text of its validation windows (each window's first token is context, as it is for the proxy). The token
    models use the proxy's own tokenizer (empty for a byte-level proxy): what its vocabulary alone is worth."""
    from flashsearch.data.shards import TokenShards
    from flashsearch.proxies.quality.corpus import load_corpus

    corpus = proxy.corpus()
    windows = proxy.validation_windows()                   # [N, T+1] the fixed validation windows
    train = load_corpus(proxy.data_path, proxy.text_field, proxy.val_fraction, proxy.corpus_name).train
    byte_model = Ngram(train.numpy().tobytes(), order=max(ORDERS.values()))
    if not isinstance(corpus, TokenShards):
        texts = [bytes(w.tolist()) for w in windows]
        return {name: byte_model.bits_per_byte(texts, order, [1] * len(texts)) for name, order in ORDERS.items()}, {}
    tok, per_id = corpus.tokenizer(), corpus.token_bytes()
    texts = [tok.decode(w.tolist()) for w in windows]
    skip = [int(per_id[int(w[0])]) for w in windows]
    by_bytes = {name: byte_model.bits_per_byte(texts, order, skip) for name, order in ORDERS.items()}
    orders = {name: o for name, o in ORDERS.items() if corpus.vocab_size ** o < 2 ** 62}
    token_model = Ngram(corpus.train.read(0, len(corpus.train)), order=max(orders.values()),
                        alphabet=corpus.vocab_size)
    n_bytes = int(sum(int(per_id[w[1:]].sum()) for w in windows))
    by_tokens = {name: token_model.bits_per_byte([w.tolist() for w in windows], order, [1] * len(windows), n_bytes)
                 for name, order in orders.items()}
    return by_bytes, by_tokens


def main(args: Settings, meta: dict) -> None:
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.reference_mult < 1:
        raise FlashsearchError("proxy_fidelity: reference_mult must be >= 1 (the reference trains longer)")
    base, ladder, kwargs, per_step = study_ladder(args.config, args.scale, "proxy_fidelity")
    kwargs["device"] = args.device
    top = len(ladder) - 1
    ref_tokens = int(round(args.reference_mult * ladder[-1] / per_step)) * per_step
    genomes = study_genomes(args.config, args.genomes, 0)
    ids = [g.id for g, _ in genomes]
    names = {g.id: n for g, n in genomes}
    search_seed = int(kwargs.get("seed", 0))
    ceiling_seed = search_seed + 1
    if args.reference_seed in (search_seed, ceiling_seed):
        raise FlashsearchError(f"proxy_fidelity: reference_seed must differ from the ladders' proxy seeds "
                               f"{search_seed} and {ceiling_seed}")
    extra_seed = max(args.reference_seed, ceiling_seed) + 1   # the reference's second seed: no other run uses it

    def job(kind: str, g, tokens: int, seed: int) -> TrainJob:
        return TrainJob(key=f"{kind}-t{tokens}-s{seed}-{args.device}|{g.id}", genome=g, tokens=tokens,
                        proxy={**kwargs, "seed": seed}, tags={"kind": kind, "layers": g.n_layers,
                                                             "d_model": g.d_model})

    refs = [job("reference", g, ref_tokens, args.reference_seed) for g, _ in genomes]
    subset = sorted(refs, key=TrainJob.cost)[:max(0, args.ceiling_genomes)]
    jobs = refs + [job("reference", j.genome, ref_tokens, extra_seed) for j in subset] \
        + [job("single", g, ladder[-1], search_seed) for g, _ in genomes]
    runs = run_jobs(jobs, out / "runs.csv", args.workers, "runs")
    ladders = run_ladders(genomes, kwargs, ladder, [search_seed], out / "ladders.csv", args.workers)
    # the published score's own noise, on the same subset as the reference's
    in_subset = {j.genome.id for j in subset}
    reseeded = run_ladders([(g, n) for g, n in genomes if g.id in in_subset], kwargs, ladder, [ceiling_seed],
                           out / "ladders.csv", args.workers)

    def losses(kind: str, seed: int) -> pd.Series:
        rows = runs[(runs["kind"] == kind) & (runs["seed"] == seed) & (runs["error"] == "")]
        return rows.set_index("genome_id")["loss"]

    ref_all = losses("reference", args.reference_seed)
    s0 = ladders.set_index("genome_id")
    s1 = reseeded.set_index("genome_id")
    single = losses("single", search_seed)
    keep = [i for i in ids if i in ref_all.index and i in s0.index and i in single.index]
    if len(keep) < len(ids):
        print(f"proxy_fidelity: {len(ids) - len(keep)} genomes lack a finished training (failed or not yet run); "
              "they are left out", flush=True)
    if len(keep) < 4:
        raise FlashsearchError(f"proxy_fidelity: only {len(keep)} genomes have every training; nothing to rank")
    ref = ref_all.loc[keep].to_numpy()
    s0 = s0.loc[keep]
    rung = {r: s0[f"loss{r}"].to_numpy() for r in range(top + 1)}
    published = rung[top]                      # the search's front is ranked by the top rung's loss
    extrapolated = extrapolate(rung[top - 1], rung[top], ladder[top - 1], ladder[top], ref_tokens) if top else None
    zero = zero_cost_baselines(args.config, [g for g, _ in genomes]).loc[keep]
    zero_values = {"non-embedding parameters (more = better)": -zero["params"].to_numpy(dtype=float),
                   "predicted latency (slower = better)": -zero["latency"].to_numpy()}
    from flashsearch.proxies.quality.short_train import ShortTrain

    proxy = ShortTrain(**{key: v for key, v in kwargs.items() if key != "device"})
    ngram, token_ngram = ngram_baselines(proxy)
    k = min(args.top_k, len(keep))
    ag = {name: rank_agreement(v, ref, k=k) for name, v in
          [*((f"rung{r}", rung[r]) for r in range(top + 1)), ("single", single.loc[keep].to_numpy()),
           *([("extrapolated", extrapolated)] if extrapolated is not None else []), *zero_values.items()]}

    # costs, CPU-seconds per genome (a rung pays the rungs below it, which it continues from)
    cpu_cols = [f"cpu{r}" for r in range(top + 1)]
    cum = {r: float(s0[cpu_cols[:r + 1]].sum(axis=1).mean()) for r in range(top + 1)}
    kind_cpu = {kind: training_time(runs[(runs["kind"] == kind) & runs["genome_id"].isin(keep)])[0]
                for kind in ("reference", "single")}
    ref_rows = runs[(runs["kind"] == "reference") & (runs["seed"] == args.reference_seed)
                    & runs["genome_id"].isin(keep)]
    ref_cost = training_time(ref_rows)[0] / len(keep)
    single_cost = kind_cpu["single"] / len(keep)
    total_cpu = float(ladders.loc[ladders["genome_id"].isin(keep), cpu_cols].to_numpy().sum()) \
        + float(reseeded[cpu_cols].to_numpy().sum()) + kind_cpu["reference"] + kind_cpu["single"]
    corpus = proxy.corpus()
    train_tokens = len(corpus.train)
    bytes_per_token = corpus.train.bytes / train_tokens if hasattr(corpus.train, "bytes") else 1.0

    # noise ceilings, on the subset trained twice: each side against itself under another seed
    twice = runs[(runs["kind"] == "reference") & (runs["seed"] == extra_seed) & (runs["error"] == "")]
    both = [i for i in keep if i in set(twice["genome_id"]) and i in s1.index]
    kk = min(k, len(both))
    enough = len(both) >= 4
    top_ceiling = rank_agreement(s0.loc[both, f"loss{top}"].to_numpy(), s1.loc[both, f"loss{top}"].to_numpy(),
                                 k=kk) if enough else None
    ref_ceiling = rank_agreement(ref_all.loc[both].to_numpy(), twice.set_index("genome_id")["loss"].loc[both]
                                 .to_numpy(), k=kk) if enough else None
    top_on_both = rank_agreement(s0.loc[both, f"loss{top}"].to_numpy(), ref_all.loc[both].to_numpy(),
                                 k=kk) if enough else None

    best_zero = max(zero_values, key=lambda n: ag[n].spearman)
    gap, (glo, ghi) = spearman_gap(published, zero_values[best_zero], ref)
    med_top, med_ref = float(np.median(published)), float(np.median(ref))
    bar = ag[f"rung{top}"].spearman >= FIDELITY_BAR and ag[f"rung{top}"].spearman - ag[best_zero].spearman \
        >= BASELINE_MARGIN
    below = ngram["trigram"] - med_top

    def row(label: str, tokens: str, a, cost: float | None) -> str:
        money = "0 (no training)" if cost is None else f"{cost:.0f} ({cost / cum[0]:.1f}x)"
        return (f"| {label} | {tokens} | {a.spearman:.3f} [{a.spearman_ci[0]:.2f}, {a.spearman_ci[1]:.2f}] | "
                f"{a.kendall:.3f} [{a.kendall_ci[0]:.2f}, {a.kendall_ci[1]:.2f}] | "
                f"{a.top_k_overlap * k:.0f}/{k} [{a.top_k_ci[0] * k:.0f}, {a.top_k_ci[1] * k:.0f}] | {money} |")

    lines = [header(f"Proxy fidelity: the search's published score against {args.reference_mult:g}x longer training",
                    meta, started, total_cpu),
             f"- from nothing, this study is {total_cpu / 60:.0f} CPU-min of trainings (about "
             f"{total_cpu / 60 / args.workers:.0f} min on {args.workers} idle cores).",
             f"- proxy: the YAML's `quality` and `data` ({describe_proxy(kwargs)}); {bytes_per_token:.2f} bytes of "
             "text per token on the training split; score: bits per byte of the fixed validation windows' text, "
             "lower is better." + (f" Every budget x scale {args.scale:g}." if args.scale != 1 else ""),
             f"- ladder: {ladder} tokens (rung 0 screens every candidate; the best third continue from a checkpoint; "
             f"the front and the exports are ranked by the top rung's loss, the score the search publishes).",
             f"- **reference: {ref_tokens:,} tokens per genome = {ref_tokens / ladder[-1]:g}x the top rung, proxy "
             f"seed {args.reference_seed}** (the search trains with seed {search_seed}), one warmup-cosine run; "
             f"{ref_cost:.0f} CPU-s per genome. It reads {ref_tokens:,} of the training split's {train_tokens:,} "
             f"tokens ({100 * ref_tokens / train_tokens:.1f}%) as random windows: about "
             f"{50 * ref_tokens / train_tokens:.1f}% of what it reads overlaps an earlier window; nothing is "
             "repeated epoch-wise.",
             f"- genomes: {len(keep)} ({args.genomes} drawn uniformly from `{args.config}`'s space with seed 0, plus "
             + ", ".join(n for g, n in genomes if n != "random" and g.id in keep) + "); none is in the tuning "
             "studies (ladder_diagnosis).",
             "- intervals: bootstrap 5-95% over genomes (2000 resamples).", "",
             f"| ranking by | tokens | Spearman vs reference | Kendall | top-{k} overlap | CPU-s / genome (x rung 0) |",
             "|---|---|---|---|---|---|"]
    for r in range(top + 1):
        role = " (screens every candidate)" if r == 0 else (" = **published** (the front)" if r == top else "")
        lines.append(row(f"rung {r}, seed {search_seed}{role}", f"{ladder[r]:,}", ag[f"rung{r}"], cum[r]))
    lines.append(row(f"one plain run of the top rung's tokens, seed {search_seed}", f"{ladder[-1]:,}",
                     ag["single"], single_cost))
    if extrapolated is not None:
        lines.append(row(f"rungs {top - 1} and {top} extrapolated in log-budget to the reference's tokens "
                         "(not published)", "-", ag["extrapolated"], cum[top]))
    for name in zero_values:
        lines.append(row(name, "-", ag[name], None))
    lines += ["", f"**Published score (rung {top}, {ladder[-1]:,} tokens): Spearman {ag[f'rung{top}'].spearman:.3f} "
              f"[{ag[f'rung{top}'].spearman_ci[0]:.2f}, {ag[f'rung{top}'].spearman_ci[1]:.2f}] against the "
              f"{ref_tokens / ladder[-1]:g}x reference, {ag[f'rung{top}'].spearman - ag[best_zero].spearman:+.3f} "
              f"over the better zero-cost baseline ({best_zero.split(' (')[0]}; paired bootstrap of the gap "
              f"[{glo:+.2f}, {ghi:+.2f}]): the bar (>= {FIDELITY_BAR}, >= {BASELINE_MARGIN} above it) is "
              f"{'reached' if bar else 'NOT reached'}.**",
              "", f"**Level:** the top rung's median genome scores {med_top:.3f} bits/byte, {abs(below):.3f} "
              f"{'below' if below >= 0 else 'above'} the byte trigram ({ngram['trigram']:.3f}; bigram "
              f"{ngram['bigram']:.3f}, unigram {ngram['unigram']:.3f}, count models of the training split on the same validation text); the "
              f"reference's median is {med_ref:.3f}. The bar ({NGRAM_MARGIN} below the trigram) is "
              f"{'reached' if below >= NGRAM_MARGIN else 'NOT reached'}."
              + ("" if not token_ngram else " Count models over the proxy's own tokens, scored in bits per byte of "
                 "the same text, say what the vocabulary alone is worth: " + ", ".join(
                     f"token {name} {v:.3f}" for name, v in token_ngram.items()) + ".")]
    lines += ["", _front_recall(s0.join(zero), ref, dataclasses.replace(base, tokens=tuple(ladder)), names), "",
              f"Noise ceilings, on the {len(both)} cheapest genomes (trained twice on each side): each side against "
              "itself under another seed, the most a ranking can agree with a reference as noisy.", ""]
    if enough:
        lines += [f"| what | tokens | Spearman | Kendall | top-{kk} overlap |", "|---|---|---|---|---|",
                  f"| rung {top} (published), seed {search_seed} vs {ceiling_seed} | {ladder[-1]:,} | "
                  f"{top_ceiling.spearman:.3f} [{top_ceiling.spearman_ci[0]:.2f}, {top_ceiling.spearman_ci[1]:.2f}] | "
                  f"{top_ceiling.kendall:.3f} | {top_ceiling.top_k_overlap * kk:.0f}/{kk} |",
                  f"| reference, seed {args.reference_seed} vs {extra_seed} | {ref_tokens:,} | "
                  f"{ref_ceiling.spearman:.3f} [{ref_ceiling.spearman_ci[0]:.2f}, {ref_ceiling.spearman_ci[1]:.2f}] | "
                  f"{ref_ceiling.kendall:.3f} | {ref_ceiling.top_k_overlap * kk:.0f}/{kk} |", "",
                  f"On those {len(both)} genomes the published score ranks the reference at Spearman "
                  f"{top_on_both.spearman:.3f} [{top_on_both.spearman_ci[0]:.2f}, {top_on_both.spearman_ci[1]:.2f}]."]
    else:
        lines.append(f"Only {len(both)} genomes are trained twice so far: no noise ceiling yet.")
    lines += ["", "Per genome (bits/byte; params in millions, latency in seconds as the YAML predicts):", "",
              "| genome | kind | layers | d_model | " + " | ".join(f"rung {r}" for r in range(top + 1))
              + f" | rung {top}, seed {ceiling_seed} | plain run | reference | non-emb. params | latency |",
              "|---|---|---|---|" + "---|" * (top + 1) + "---|---|---|---|---|"]
    for i, gid in enumerate(keep):
        r0 = s0.loc[gid]
        lines.append(f"| {gid} | {names[gid]} | {r0['layers']} | {r0['d_model']} | "
                     + " | ".join(f"{r0[f'loss{r}']:.3f}" for r in range(top + 1))
                     + f" | {s1.loc[gid, f'loss{top}'] if gid in s1.index else float('nan'):.3f} | "
                       f"{single.loc[gid]:.3f} | {ref[i]:.3f} | "
                       f"{zero.loc[gid, 'params'] / 1e6:.0f} | {zero.loc[gid, 'latency']:.2f} |")
    lines += ["", "![proxy fidelity](proxy_fidelity.png)"]
    plot(out / "proxy_fidelity.png", published, ref, ngram, ag[f"rung{top}"], ladder, ref_tokens)
    print(write_text(out / "proxy_fidelity.md", "\n".join(lines) + "\n").read_text(), flush=True)

    summary = {"top_rung_tokens": int(ladder[-1]), "reference_tokens": int(ref_tokens),
               "reference_seed": int(args.reference_seed), "search_seed": search_seed, "n_genomes": len(keep),
               "spearman": {"rung0": ag["rung0"].spearman, "top": ag[f"rung{top}"].spearman,
                            "published": ag[f"rung{top}"].spearman,
                            "params": ag["non-embedding parameters (more = better)"].spearman,
                            "latency": ag["predicted latency (slower = better)"].spearman},
               "noise_ceiling": {"top": None if top_ceiling is None else top_ceiling.spearman,
                                 "reference": None if ref_ceiling is None else ref_ceiling.spearman},
               "ngram_bpb": {name: round(v, 4) for name, v in ngram.items()},
               "median_bpb": {"top": round(med_top, 4), "reference": round(med_ref, 4)}}
    summary["spearman"] = {key: round(float(v), 4) for key, v in summary["spearman"].items()}
    summary["noise_ceiling"] = {key: None if v is None else round(float(v), 4)
                                for key, v in summary["noise_ceiling"].items()}
    write_text(args.summary, json.dumps(summary, indent=2) + "\n")


def _front_recall(rows: pd.DataFrame, ref: np.ndarray, ladder, names_of: dict) -> str:
    """What a search on these genomes would publish, next to the reference's own loss-latency front."""
    from flashsearch.pareto import pareto_mask

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


def plot(path: Path, published: np.ndarray, ref: np.ndarray, ngram: dict[str, float], agreement, ladder: list[int],
         ref_tokens: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.8))
    ax.scatter(published, ref, s=24)
    for name, value in ngram.items():
        if value < max(published.max(), ref.max()) + 0.3:
            ax.axvline(value, color="0.6", lw=0.8, ls="--")
            ax.text(value, ref.min(), f" byte {name}", rotation=90, va="bottom", fontsize=8, color="0.4")
    ax.set_xlabel(f"published score: top rung, {ladder[-1]:,} tokens (bits/byte)")
    ax.set_ylabel(f"reference, {ref_tokens:,} tokens (bits/byte)")
    ax.set_title(f"Spearman {agreement.spearman:.2f}, Kendall {agreement.kendall:.2f} ({len(ref)} genomes)")
    save_figure(fig, path)
