"""Depth vs width: fit L(D, W, N) = L0 + a D^-alpha + b W^-beta + c N^-gamma and test it out of sample.

Llama-style genomes (D blocks of attention + FFN, GQA group 4, head 128, SwiGLU x3, width W) over a grid of depths
and widths are short-trained with the default CPU proxy (width / 16, so W = 1024..4096 trains at 64..256) at the
YAML's budget.tokens (294,912: the top rung, where the search ranks its front). N is the proxy's non-embedding
parameter count. The law is fitted on the smaller models and scored on the largest ones (extrapolation in N), and
again with the deepest models held out (extrapolation in D); paper: within 5.3%. Then, with the H100 roofline
predictor (batch-1 decode of 8k tokens, as hybrid_1b.yaml), the law picks the best depth and width under several
latency budgets: deeper wins per parameter, but not necessarily per unit of latency (paper: depth 12 was best under
3 s).

    python -m experiments run depth_width                # 35 models, ~40 min on 2 CPU cores
    python -m experiments run depth_width scale=8 device=cuda workers=1

Writes depth_width.{csv,md,png} to `out`; training rows are cached in the CSV (reruns resume).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.roofline import RooflinePredictor

from experiments.lib.common import default_proxy
from experiments.lib.jobs import TrainJob, run_jobs, training_time
from experiments.lib.output import header, pyplot, save_figure, write_text
from experiments.lib.scaling_law import MIN_EXPONENT, DepthWidthLaw, fit_depth_width_law, relative_errors

WORKLOAD = Workload(device="h100", batch=1, prompt_len=128, decode_tokens=8192)
BUDGETS_S = (4.0, 6.0, 8.0, 12.0, 16.0)


def llama_genome(depth: int, width: int) -> Genome:
    heads = width // 128
    return Genome(layer_types=("attention", "ffn") * depth, d_model=width, n_heads=heads,
                  n_kv_heads=max(1, heads // 4), head_dim=128, ffn_ratio=3.0, vocab_size=131072)


def non_embedding_params(proxy_params: int, proxy_width: int, vocab: int = 256) -> int:
    """The proxy's parameters minus its (tied) byte embedding."""
    return int(proxy_params - vocab * proxy_width)


def fit_and_score(df: pd.DataFrame, holdout: np.ndarray) -> tuple[DepthWidthLaw, np.ndarray, np.ndarray]:
    """The law fitted without the held-out rows, its relative errors on them, and those of a constant (the fitted
    rows' mean loss): when losses barely vary, a small relative error says little until it beats the constant."""
    fit = df[~holdout]
    law = fit_depth_width_law(fit.D, fit.W, fit.N, fit.loss)
    test = df[holdout]
    constant = np.abs(fit.loss.mean() - test.loss.to_numpy()) / test.loss.to_numpy()
    return law, relative_errors(law, test.D, test.W, test.N, test.loss), constant


MATCH_N = 1.15  # two models count as matched in parameters when their N differ by at most this factor


def deeper_wins_at_matched_params(df: pd.DataFrame) -> tuple[int, int]:
    """(pairs where the deeper model has the lower loss, pairs) over models of different depth matched in N."""
    rows = list(df[["D", "N", "loss"]].itertuples(index=False))
    pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]
             if a.D != b.D and max(a.N, b.N) / min(a.N, b.N) <= MATCH_N]
    return sum((a.loss < b.loss) == (a.D > b.D) for a, b in pairs), len(pairs)


def best_under_budgets(law: DepthWidthLaw, proxy_width_of, params_of, predictor: RooflinePredictor,
                       depths: tuple[int, ...], widths: tuple[int, ...]):
    """For each latency budget: the (D, W) on the study's grid ranges with the lowest predicted loss."""
    rows = []
    cands = []
    for d in range(min(depths), max(depths) + 1):
        for w in range(min(widths), max(widths) + 1, 512):  # heads stay a multiple of the GQA group
            g = llama_genome(d, w)
            cands.append((d, w, predictor.predict(g, WORKLOAD),
                          float(law.predict(d, proxy_width_of(w), params_of(d, w)))))
    for budget in BUDGETS_S:
        ok = [c for c in cands if c[2] <= budget]
        if ok:
            d, w, lat, loss = min(ok, key=lambda c: c[3])
            rows.append((budget, d, w, lat, loss))
        else:
            rows.append((budget, None, None, None, None))
    return rows, cands


@dataclass(frozen=True)
class Settings:
    config: str            # source of the default proxy
    tokens: int | None     # training tokens per model (x scale); null: the YAML's budget.tokens (its top rung)
    depths: tuple[int, ...]  # the grid of Llama-style models (D blocks at width W)
    widths: tuple[int, ...]
    scale: float           # multiply every token budget by this (the same study, bigger; with device=cuda)
    device: str            # cpu or cuda (ShortTrain's device)
    workers: int           # parallel trainings (1 per CPU core; 1 on a GPU)
    out: str               # folder for the CSV, markdown and figure


def main(args: Settings, meta: dict) -> None:
    depths, widths = args.depths, args.widths
    started = time.perf_counter()
    out = Path(args.out)

    kwargs, budget_tokens = default_proxy(args.config)
    kwargs = {**kwargs, "device": args.device}
    tokens = int(round((args.tokens or budget_tokens) * args.scale))
    jobs = [TrainJob(key=f"t{tokens}-{args.device}|D{d}-W{w}", genome=llama_genome(d, w), tokens=tokens,
                     proxy=kwargs, tags={"D": d, "W_full": w}) for d in depths for w in widths]
    print(f"depth vs width: {len(jobs)} Llama-style models at {tokens:,} tokens, {args.workers} workers", flush=True)
    rows = run_jobs(jobs, out / "depth_width.csv", args.workers, "depth-width")
    bad = rows[rows["error"] != ""]
    if len(bad):
        print(f"dropping {len(bad)} failed trainings: {sorted(bad['key'])}", flush=True)
    df = rows[rows["error"] == ""].copy()

    from flashsearch.proxies.quality.short_train import ShortTrain

    proxy = ShortTrain(**{k: v for k, v in kwargs.items() if k != "device"})
    df["W"] = [proxy.proxy_d_model(int(w)) for w in df["W_full"]]
    df["N"] = [non_embedding_params(p, w) for p, w in zip(df["proxy_params"], df["W"])]
    df = df.sort_values("N").reset_index(drop=True)

    by_n = df["N"].to_numpy() > np.quantile(df["N"], 0.7)          # the largest ~30% of models
    by_d = df["D"].to_numpy() == max(depths)                         # the deepest models
    law_n, err_n, const_n = fit_and_score(df, by_n)
    law_d, err_d, const_d = fit_and_score(df, by_d)
    law_all = fit_depth_width_law(df.D, df.W, df.N, df.loss)
    df["predicted"] = law_n.predict(df.D, df.W, df.N)
    df["role"] = np.where(by_n, "held out", "fit")

    predictor = RooflinePredictor(device="h100")
    budget_rows, cands = best_under_budgets(law_all, proxy.proxy_d_model,
                                            lambda d, w: _params(d, proxy.proxy_d_model(w)), predictor,
                                            depths, widths)

    per_param = _best_depth_per_params(law_all, depths)

    observed = "; ".join(f"W={w}: D={int(g.loc[g.loss.idxmin(), 'D'])}" for w, g in df.groupby("W_full"))
    wins, pairs = deeper_wins_at_matched_params(df)
    at_bound = [name for law in (law_n, law_d) for name in ("alpha", "beta", "gamma")
                if min(abs(getattr(law, name) - b) for b in (MIN_EXPONENT, 3.0)) < 1e-3]
    warning = ("\n**The law does not describe these data:** fitted exponents sit on their bounds "
               f"({', '.join(sorted(set(at_bound)))}), i.e. terms are switched off or saturated. Loss is not "
               "monotone in depth at this budget (see the lowest-loss depth per width above), which a sum of "
               "decreasing power laws cannot express.\n" if at_bound else "")
    table = "\n".join(f"| {r.D} | {r.W_full} ({r.W}) | {r.N / 1e6:.2f} | {r.loss:.4f} | {r.predicted:.4f} | "
                      f"{abs(r.predicted - r.loss) / r.loss * 100:.1f}% | {r.role} |" for r in df.itertuples())
    budgets = "\n".join(f"| {b:g} | {d} | {w} | {lat:.2f} | {loss:.4f} |" if d else f"| {b:g} | none fits | | | |"
                        for b, d, w, lat, loss in budget_rows)
    md = header("Depth vs width", meta, started, *training_time(rows)) + f"""
{len(df)} Llama-style models (D blocks of attention + FFN) trained with the default proxy at {tokens:,} tokens
(`{args.config}`'s ShortTrain, width / 16). W is the full width (proxy width in brackets); N the proxy's
non-embedding parameters; losses are validation bits per byte.

**Fitted on the smallest 70% by N, scored on the largest 30%** (extrapolation in N):
`{law_n.formula()}`; held-out relative error mean {err_n.mean() * 100:.1f}%, max {err_n.max() * 100:.1f}%
(paper: within 5.3%). A constant (the fitted models' mean loss) scores {const_n.mean() * 100:.1f}% mean,
{const_n.max() * 100:.1f}% max on the same models: every loss here lies in {df.loss.min():.2f}-{df.loss.max():.2f} bits/byte.

**Fitted without the deepest models (D = {max(depths)}), scored on them** (extrapolation in D):
`{law_d.formula()}`; held-out relative error mean {err_d.mean() * 100:.1f}%, max {err_d.max() * 100:.1f}% (the constant:
{const_d.mean() * 100:.1f}%, {const_d.max() * 100:.1f}%).

**Observed lowest-loss depth per width:** {observed}.

**Observed per parameter, without the law:** of the {pairs} pairs of models of different depth whose N differ by at
most {MATCH_N - 1:.0%}, the deeper one has the lower loss in {wins} ({wins / max(pairs, 1):.0%}).
{warning}
**Per parameter** (law fitted on all points): at matched non-embedding parameters the best depth is
{per_param}.

**Per latency** (same law; H100 roofline, batch 1, 8k decode tokens; D in {min(depths)}..{max(depths)}, W in
{min(widths)}..{max(widths)} step 512):

| latency budget (s) | best depth | best width | predicted latency (s) | predicted loss |
|---|---|---|---|---|
{budgets}

| D | W (proxy) | N (M) | loss | law (fit on small N) | error | role |
|---|---|---|---|---|---|---|
{table}

![depth vs width](depth_width.png)
"""
    write_text(out / "depth_width.md", md)
    plot(out / "depth_width.png", df, law_n, law_all, proxy.proxy_d_model, budget_rows, cands)
    print(md, flush=True)


def _params(depth: int, proxy_width: int) -> float:
    """Non-embedding parameters of a proxy Llama block stack: GQA attention (group 4) + SwiGLU x3 + 2 norms."""
    w = proxy_width
    kv = max(1, (w // 16) // 4) * 16
    return depth * (2 * w * w + 2 * w * kv + 9 * w * w + 2 * w) + w


def _best_depth_per_params(law: DepthWidthLaw, depths: tuple[int, ...]) -> str:
    parts = []
    for target in (0.5e6, 1e6, 2e6, 4e6):
        best = None
        for d in range(min(depths), 33):
            # the width (continuous) that gives `target` parameters at depth d
            w = np.sqrt(target / d / 11.5)
            if not 32 <= w <= 512:
                continue
            loss = float(law.predict(d, w, target))
            if best is None or loss < best[1]:
                best = (d, loss, w)
        if best:
            parts.append(f"D={best[0]} (W~{best[2]:.0f}) at N={target / 1e6:g}M")
    return "; ".join(parts)


def plot(path: Path, df, law_n, law_all, proxy_width_of, budget_rows, cands) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    a1, a2, a3 = axes
    for w, grp in df.groupby("W_full"):
        a1.plot(grp.N / 1e6, grp.loss, "o-", ms=4, label=f"W={w}")
    a1.set_xscale("log")
    a1.set_xlabel("proxy non-embedding params (M)")
    a1.set_ylabel("val bits/byte")
    a1.set_title("loss vs params, by width (points: depth)")
    a1.legend(fontsize=8)
    for role, m in (("fit", "o"), ("held out", "s")):
        sub = df[df.role == role]
        a2.scatter(sub.loss, sub.predicted, marker=m, s=22, label=role)
    lo, hi = df.loss.min(), df.loss.max()
    a2.plot([lo, hi], [lo, hi], color="grey", lw=1)
    a2.set_xlabel("observed")
    a2.set_ylabel("law (fitted on small N)")
    a2.set_title("law: fit vs extrapolation")
    a2.legend(fontsize=8)
    lat = np.array([c[2] for c in cands])
    loss = np.array([c[3] for c in cands])
    sc = a3.scatter(lat, loss, c=[c[0] for c in cands], s=8, cmap="viridis")
    fig.colorbar(sc, ax=a3, label="depth")
    for b, d, w, lt, ls in budget_rows:
        if d:
            a3.annotate(f"D={d}", (lt, ls), textcoords="offset points", xytext=(3, -10), fontsize=8)
            a3.axvline(b, color="grey", lw=0.5, ls=":")
    a3.set_xlabel("H100 decode latency, 8k tokens (s, roofline)")
    a3.set_ylabel("law-predicted loss")
    a3.set_title("best depth under latency budgets")
    save_figure(fig, path)

