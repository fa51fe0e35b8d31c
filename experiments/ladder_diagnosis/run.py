"""Ladder diagnosis: does the multi-fidelity ladder's top rung rank genomes as one plain run of the same tokens does,
and which part of its schedule (warmup, decay length, schedule shape) or of the recipe (learning rate, muP width
scaling) moves it?

On a tuning set of genomes drawn from the YAML's space with another seed than the fidelity studies (their ids are
checked disjoint), every arm trains each genome with the top rung's tokens and changes ONE thing against the
target, one plain warmup-cosine run (what ranked 4x longer training at Spearman 0.91 in issue 25's measurement):

- ladder arms train rung 0, 1, 2 from checkpoints exactly as the search does (warmup-stable-decay);
- single arms train once, under warmup-cosine.

Reported per arm: its agreement with the target (Spearman, Kendall, with bootstrap intervals), the mean and spread
of its loss minus the target's, and the target's own agreement with itself under another seed (the noise
ceiling: an arm that agrees with the target as well as a reseed does ranks as well as the target). The ladder arms
also report how their lower rungs rank their own top rung.

    python -m experiments run ladder_diagnosis           # ~50 CPU-min on the default ladder
    python -m experiments run ladder_diagnosis --quick   # smoke run
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.lib.common import describe_proxy, sample_genomes, study_ladder
from experiments.lib.jobs import TrainJob, run_jobs
from experiments.lib.ladder import run_ladders, study_genomes
from experiments.lib.output import header, write_text
from experiments.lib.ranking import rank_agreement


@dataclass(frozen=True)
class Arm:
    name: str
    kind: str                                  # "single" (one warmup-cosine run) or "ladder" (the search's rungs)
    why: str                                   # what it changes against the target
    options: dict[str, Any] = field(default_factory=dict)   # ShortTrain options on top of the YAML's
    seed: int = 0


def arms(top_steps: int, first_steps: int, warmup_fraction: float) -> list[Arm]:
    """The arms, each one change away from the target (warmups in steps, so the arms mean the same whatever the
    code's defaults)."""
    long_warmup = max(1, round(warmup_fraction * top_steps))     # the target's: its share of its steps
    short_warmup = max(1, round(warmup_fraction * first_steps))  # the ladder's before this study: of rung 0
    return [
        Arm("target", "single", f"warmup-cosine, warmup {long_warmup} steps", {"warmup_steps": long_warmup}),
        Arm("target, seed 1", "single", "the target under another seed: the noise ceiling",
            {"warmup_steps": long_warmup}, seed=1),
        Arm("ladder, short warmup", "ladder", f"the ladder as searched before: WSD, warmup {short_warmup} "
            "steps, decay 20% of each rung", {"warmup_steps": short_warmup}),
        Arm("ladder, long warmup", "ladder", f"WSD with the target's warmup ({long_warmup} steps, capped inside "
            "rung 0)", {"warmup_steps": long_warmup}),
        Arm("ladder, short warmup, long decay", "ladder", "WSD, decay 50% of each rung",
            {"warmup_steps": short_warmup, "decay_fraction": 0.5}),
        Arm("single, short warmup", "single", f"warmup-cosine with the ladder's warmup ({short_warmup} steps)",
            {"warmup_steps": short_warmup}),
        Arm("single, lr / 2", "single", "the target at half the learning rate",
            {"warmup_steps": long_warmup, "lr_scale": 0.5}),
        Arm("single, lr x 2", "single", "the target at twice the learning rate",
            {"warmup_steps": long_warmup, "lr_scale": 2.0}),
        Arm("single, muP widths", "single", "hidden matrices at lr x 128 / proxy width",
            {"warmup_steps": long_warmup, "lr_width_base": 128}),
    ]


@dataclass(frozen=True)
class Settings:
    config: str                      # space, ladder and proxy
    genomes: int                     # uniform draws: the tuning set
    draw_seed: int                   # their seed (the fidelity studies draw with seed 0)
    scale: float                     # multiply every token budget by this
    workers: int                     # parallel trainings
    out: str                         # folder for the CSVs and the markdown


def _proxy_options(base: dict[str, Any], arm: Arm) -> dict[str, Any]:
    from flashsearch.proxies.quality.config import ShortTrainConfig

    options = {**base, **arm.options, "seed": arm.seed}
    if "lr_scale" in options:
        options["lr"] = ShortTrainConfig.from_options(**base).lr * options.pop("lr_scale")
    return options


def main(args: Settings, meta: dict) -> None:
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, tokens, base, per_step = study_ladder(args.config, args.scale, "ladder_diagnosis")
    fidelity = {g.id for g, _ in study_genomes(args.config, 24, 0)}
    genomes = [g for g in sample_genomes(args.config, args.genomes + 8, args.draw_seed) if g.id not in fidelity]
    genomes = sorted(genomes[:args.genomes], key=lambda g: (g.n_layers, g.d_model))
    ids = [g.id for g in genomes]
    from flashsearch.proxies.quality.config import ShortTrainConfig

    every = arms(tokens[-1] // per_step, tokens[0] // per_step, ShortTrainConfig.from_options(**base).warmup_fraction)

    losses: dict[str, pd.DataFrame] = {}
    cpu = 0.0
    singles = [a for a in every if a.kind == "single"]
    jobs = [TrainJob(key=f"{a.name}|{g.id}", genome=g, tokens=tokens[-1], proxy=_proxy_options(base, a),
                     tags={"layers": g.n_layers, "d_model": g.d_model}) for a in singles for g in genomes]
    rows = run_jobs(jobs, out / "single_runs.csv", args.workers, "single")
    cpu += float(rows["cpu_seconds"].sum())
    for a in singles:
        mine = rows[rows["key"].str.startswith(f"{a.name}|")].set_index("genome_id")
        losses[a.name] = pd.DataFrame({"top": mine["loss"].reindex(ids)})
    for a in (a for a in every if a.kind == "ladder"):
        lad = run_ladders([(g, "random") for g in genomes], _proxy_options(base, a), tokens, [a.seed],
                          out / "ladders.csv", args.workers).set_index("genome_id").reindex(ids)
        cpu += float(lad[[f"cpu{k}" for k in range(len(tokens))]].to_numpy().sum())
        losses[a.name] = pd.DataFrame({"top": lad[f"loss{len(tokens) - 1}"],
                                       **{f"rung{k}": lad[f"loss{k}"] for k in range(len(tokens) - 1)}})

    target = losses["target"]["top"].to_numpy()
    lines = [header("Ladder diagnosis: what the multi-fidelity ladder's schedule does to its ranking", meta, started,
                    cpu),
             f"- genomes: {len(ids)} drawn from `{args.config}`'s space with seed {args.draw_seed}, none of them in "
             "the fidelity studies' draws (a tuning set); depths "
             f"{min(g.n_layers for g in genomes)}-{max(g.n_layers for g in genomes)}, widths "
             f"{min(g.d_model for g in genomes)}-{max(g.d_model for g in genomes)}.",
             f"- proxy: {describe_proxy(base)}; every arm trains {tokens[-1]:,} tokens (the top rung; ladder "
             f"{tokens}), validation bits per byte, lower is better.",
             "- target: one warmup-cosine run (what issue 25 measured ranking 4x longer training at Spearman 0.91). "
             "An arm that agrees with the target as well as the target agrees with itself under another seed "
             "ranks as well as it does.", "- intervals: bootstrap 5-95% over genomes.", "",
             "| arm | what it changes | Spearman vs target | Kendall | mean loss | loss - target (mean, sd) |",
             "|---|---|---|---|---|---|"]
    for a in every:
        v = losses[a.name]["top"].to_numpy()
        ok = np.isfinite(v) & np.isfinite(target)
        if a.name == "target" or ok.sum() < 3:
            ag_text = "-"
            kt = "-"
        else:
            ag = rank_agreement(v[ok], target[ok])
            ag_text = f"{ag.spearman:.3f} [{ag.spearman_ci[0]:.2f}, {ag.spearman_ci[1]:.2f}]"
            kt = f"{ag.kendall:.3f}"
        d = v[ok] - target[ok]
        lines.append(f"| {a.name} | {a.why} | {ag_text} | {kt} | {np.nanmean(v):.3f} | "
                     f"{d.mean():+.3f}, {d.std():.3f} |")
    ladders = [a for a in every if a.kind == "ladder"]
    lines += ["", "How each ladder's lower rungs rank its own top rung (Spearman):", "",
              "| arm | " + " | ".join(f"rung {k} ({tokens[k]:,})" for k in range(len(tokens) - 1)) + " |",
              "|---|" + "---|" * (len(tokens) - 1)]
    for a in ladders:
        top = losses[a.name]["top"].to_numpy()
        lines.append(f"| {a.name} | " + " | ".join(
            f"{rank_agreement(losses[a.name][f'rung{k}'].to_numpy(), top).spearman:.3f}"
            for k in range(len(tokens) - 1)) + " |")
    lines += ["", "Per genome (bits/byte at the top rung's tokens):", "",
              "| genome | layers | d_model | " + " | ".join(a.name for a in every) + " |",
              "|---|---|---|" + "---|" * len(every)]
    for i, g in enumerate(genomes):
        lines.append(f"| {g.id} | {g.n_layers} | {g.d_model} | "
                     + " | ".join(f"{losses[a.name]['top'].iloc[i]:.3f}" for a in every) + " |")
    md = "\n".join(lines) + "\n"
    print(write_text(out / "ladder_diagnosis.md", md).read_text(), flush=True)
