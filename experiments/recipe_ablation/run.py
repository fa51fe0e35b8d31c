"""Training-recipe ablation: weight normalization and meta tokens, over several architectures and seeds.

Paper (1B scale): weight normalization +1.20% commonsense accuracy and -0.66 Wiki PPL, at a step time of 0.46
vs 0.43 s; 256 meta tokens +0.45% accuracy. Here each recipe is switched on and off in the short-training
proxy (49k tokens by default) for the Flash pattern, attention + FFN and Mamba2 + FFN
(search_spaces/reference/), over >= 3 seeds.
Meta tokens scale with the context: the paper's 256 per 4k-token sequence become 8 per 128-byte window.
Deltas are paired per seed (same data order and init seed), reported as mean ± std over seeds, with the
CPU time ratio against the baseline.

    python -m experiments run recipe_ablation                   # ~15 min on 2 CPU cores
    python -m experiments run recipe_ablation tokens=196608     # longer training (~1 h)
    python -m experiments run recipe_ablation scale=8 device=cuda workers=1

Writes recipe_ablation.{csv,md,png} to `out`; training rows are cached in the CSV (reruns resume).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashsearch.builders import load_genome
from flashsearch.errors import FlashsearchError

from experiments.lib.common import default_proxy
from experiments.lib.jobs import TrainJob, run_jobs, training_time
from experiments.lib.output import header, pyplot, save_figure, write_text

ARCHS = {
    "Flash pattern": "search_spaces/reference/flash_mix_staged_1b.yaml",
    "Attention + FFN": "search_spaces/reference/attention_ffn_1b.yaml",
    "Mamba2 + FFN": "search_spaces/reference/mamba2_ffn_1b.yaml",
}
META_TOKENS = 8  # 256 x 128 / 4096
VARIANTS = {  # ShortTrain overrides
    "baseline": {},
    "+ weight norm": {"weight_norm": True},
    f"+ meta tokens ({META_TOKENS})": {"meta_tokens": META_TOKENS},
    "+ both": {"weight_norm": True, "meta_tokens": META_TOKENS},
}


def paired_delta(loss: dict, base: dict) -> tuple[float, float, int]:
    """Mean and std over seeds of loss[s] - base[s], and how many seeds improved (delta < 0)."""
    seeds = sorted(set(loss) & set(base))
    d = np.array([loss[s] - base[s] for s in seeds])
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0, int((d < 0).sum())


@dataclass(frozen=True)
class Settings:
    config: str     # source of the default proxy
    seeds: int      # proxy seeds per cell (>= 2, to report a spread)
    tokens: int     # training tokens per run (x scale)
    scale: float    # multiply every token budget by this
    device: str     # cpu or cuda (ShortTrain's device)
    workers: int    # parallel trainings
    out: str        # folder for the CSV, markdown and figure


def main(args: Settings, meta: dict) -> None:
    if args.seeds < 2:
        raise FlashsearchError("recipe_ablation: seeds must be >= 2 to report a spread")
    started = time.perf_counter()
    out = Path(args.out)

    kwargs, _ = default_proxy(args.config)
    tokens = int(round(args.tokens * args.scale))
    genomes = {name: load_genome(path) for name, path in ARCHS.items()}
    jobs = []
    for arch, g in genomes.items():
        for variant, extra in VARIANTS.items():
            for s in range(args.seeds):
                key = f"t{tokens}-s{s}-{args.device}|{'+'.join(f'{k}={v}' for k, v in extra.items()) or 'base'}|{g.id}"
                jobs.append(TrainJob(key=key, genome=g, tokens=tokens,
                                     proxy={**kwargs, **extra, "seed": s, "device": args.device},
                                     tags={"arch": arch, "variant": variant}))
    print(f"recipe ablation: {len(jobs)} trainings at {tokens:,} tokens, {args.workers} workers", flush=True)
    rows = run_jobs(jobs, out / "recipe_ablation.csv", args.workers, "recipe")

    table, plot_rows = [], []
    for arch in ARCHS:
        sub = rows[rows.arch == arch]
        base = sub[sub.variant == "baseline"].set_index("seed")
        base_loss, base_secs = base.loss.to_dict(), base.seconds.mean()
        for variant in VARIANTS:
            v = sub[sub.variant == variant].set_index("seed")
            mean, std = v.loss.mean(), v.loss.std(ddof=1)
            if variant == "baseline":
                delta = "—"
            else:
                dm, ds, wins = paired_delta(v.loss.to_dict(), base_loss)
                delta = f"{dm:+.4f} ± {ds:.4f} ({wins}/{len(v)} seeds better)"
                plot_rows.append((arch, variant, dm, ds))
            table.append(f"| {arch} | {variant} | {mean:.4f} ± {std:.4f} | {delta} | "
                         f"{v.seconds.mean() / base_secs:.2f}x |")
    md = header("Training recipe ablation", meta, started, *training_time(rows)) + f"""
Proxy: `{args.config}`'s ShortTrain at {tokens:,} tokens; weight norm turns weight decay off (as the paper);
meta tokens: {META_TOKENS} learnable tokens prepended to every window. {args.seeds} seeds per cell; losses are
validation bits per byte (lower is better); Δ is paired per seed against the baseline. Paper: weight norm
-0.66 PPL / +1.20% CR, meta tokens +0.45% CR (1B models, long training). The time column is each training's
wall time over the baseline's, taken while other jobs shared the cores: a rough cost, not a speed benchmark.

| architecture | recipe | loss (mean ± std) | Δ vs baseline | CPU time vs baseline |
|---|---|---|---|---|
""" + "\n".join(table) + """

![recipe ablation](recipe_ablation.png)
"""
    write_text(out / "recipe_ablation.md", md)
    plot(out / "recipe_ablation.png", plot_rows)
    print(md, flush=True)


def plot(path: Path, plot_rows) -> None:
    plt = pyplot()
    archs = list(dict.fromkeys(r[0] for r in plot_rows))
    variants = list(dict.fromkeys(r[1] for r in plot_rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(variants)
    for j, var in enumerate(variants):
        pts = [next(r for r in plot_rows if r[0] == a and r[1] == var) for a in archs]
        ax.bar(np.arange(len(archs)) + j * width, [p[2] for p in pts], width, yerr=[p[3] for p in pts],
               capsize=3, label=var)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(archs)) + width * (len(variants) - 1) / 2, archs)
    ax.set_ylabel("Δ val bits/byte vs baseline (paired, mean ± std)")
    ax.set_title("training recipe ablation (negative = better)")
    ax.legend(fontsize=8)
    save_figure(fig, path)

