"""Validate latency predictors against measured CPU decode latency (`flashsearch latency validate`).

Genomes are sampled from a search space, then scaled down to small widths (`ProfileRecipe`: head_dim 32, small
Mamba2 state, a small vocab) so that timing them on a CPU takes seconds; their layer patterns, the thing the
search ranks, are kept. Each genome is measured with MeasuredPredictor(device="cpu") in interleaved rounds
(round r measures every genome before round r+1; the median is kept), and predicted by each named predictor.
Reported: Kendall tau and Spearman rho (ranking, what a search needs), MAPE (absolute accuracy), the 5 worst
genomes, and a predicted-vs-measured scatter plot.

`learned` is never scored on its training data: it is fitted on a separate sample of genomes (another seed,
none shared with the validation set) measured the same way.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload, latency_source
from flashsearch.proxies.latency.profile import ProfileRecipe

ROOT = Path(__file__).resolve().parents[2]


# ---- statistics ------------------------------------------------------------------------------------------------
def rank_stats(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Kendall tau-b, Spearman rho and mean absolute percentage error of predicted vs measured."""
    from scipy.stats import kendalltau, spearmanr

    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if p.shape != m.shape or p.size < 2:
        raise FlashsearchError("rank statistics need two equally long sequences of at least 2 values")
    if np.any(m <= 0):
        raise FlashsearchError("measured latencies must be positive for MAPE")
    return {"kendall_tau": float(kendalltau(p, m).statistic), "spearman": float(spearmanr(p, m).statistic),
            "mape": float(np.mean(np.abs(p - m) / m))}


# ---- genomes ------------------------------------------------------------------------------------------------------
def sample_small_genomes(space: Any, n: int, seed: int, widths: Sequence[int], vocab: int,
                         recipe: ProfileRecipe | None = None, exclude: set[str] | None = None) -> list[Genome]:
    """n distinct genomes: the space's layer patterns, at a small width chosen by the rank of the full width."""
    recipe = recipe or ProfileRecipe()
    rng = random.Random(seed)
    full_widths = sorted(space.widths)
    small = sorted(widths)
    seen = set(exclude or ())
    out: list[Genome] = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        g = space.decode(space.sample(rng))
        # Same relative position in the width list (1024 -> smallest, 2560 -> largest).
        rank = full_widths.index(g.d_model) / max(1, len(full_widths) - 1)
        d = small[round(rank * (len(small) - 1))]
        s = recipe.genome(g.layer_types, d, vocab)
        if s.id not in seen:
            seen.add(s.id)
            out.append(s)
    if len(out) < n:
        raise FlashsearchError(f"the space yields only {len(out)} distinct small genomes; ask for fewer (--n)")
    return out


def measure_all(genomes: Sequence[Genome], workload: Workload, repeats: int = 3, threads: int = 1,
                clock: str = "thread", progress: Callable[[str], None] | None = None) -> list[float]:
    """Median measured seconds per genome over `repeats` interleaved rounds.

    clock="thread" times the decode loop in CPU time of the calling thread (MeasuredPredictor's loop, its clock
    swapped; see proxies/latency/profile.py for why), clock="wall" is MeasuredPredictor unchanged.
    """
    from flashsearch.proxies.measured import MeasuredPredictor
    from flashsearch.proxies.latency.profile import _clock

    now = _clock(clock)

    class _Meter(MeasuredPredictor):
        def _time(self, fn: Any) -> float:
            t0 = now()
            fn()
            return now() - t0

    meter = _Meter(device="cpu", warmup=4, repeats=1, threads=threads)
    samples: list[list[float]] = [[] for _ in genomes]
    t0 = time.perf_counter()
    for r in range(repeats):
        for i, g in enumerate(genomes):
            samples[i].append(meter.predict(g, workload))
        if progress:
            el = time.perf_counter() - t0
            progress(f"measure: round {r + 1}/{repeats} of {len(genomes)} genomes, {el:.0f}s elapsed, "
                     f"ETA {el / (r + 1) * (repeats - r - 1):.0f}s")
    return [float(statistics.median(s)) for s in samples]


# ---- roofline calibration for a CPU ----------------------------------------------------------------------------
def roofline_terms(genome: Genome, workload: Workload, dtype_bytes: int = 4) -> np.ndarray:
    """[bytes, flops, launches] of the whole decode (all steps, layers and head), as the roofline counts them."""
    from flashsearch.proxies.latency.roofline import _cost_table

    n, d, v = workload.decode_tokens, genome.d_model, genome.vocab_size
    total = np.zeros(3)
    for op in dict.fromkeys(genome.layer_types):
        t = _cost_table(genome, op, workload.prompt_len, n, False)             # [N, 5] per layer
        nbytes = (t[:, 0] + t[:, 1] + t[:, 2]) * dtype_bytes
        total += genome.count(op) * np.array([nbytes.sum(), t[:, 3].sum(), t[:, 4].sum()])
    head_bytes = (2 * d + d + 2 * d + v * d + v + v) * dtype_bytes              # as RooflinePredictor's head
    total += n * np.array([head_bytes, 2.0 * v * d, 4.0])
    return total


def calibrate_cpu_roofline(rows: Sequence[tuple[Genome, Workload, float]]) -> dict[str, float]:
    """Least-squares (non-negative, relative error) fit of seconds = bytes / BW + flops / F + launches * t_l.

    The roofline takes max(memory, compute) per kernel; on a CPU at small width both are tiny next to the
    per-kernel (per-op dispatch) cost, so the sum is a fine approximation for the fit.
    """
    from scipy.optimize import nnls

    x = np.stack([roofline_terms(g, w) for g, w, _ in rows])
    y = np.array([s for _, _, s in rows])
    scale = x.max(axis=0)
    coef, _ = nnls((x / scale) / y[:, None], np.ones(len(y)))
    inv_bw, inv_f, t_launch = coef / scale
    return {"memory_bandwidth_gbs": (1.0 / inv_bw / 1e9) if inv_bw > 0 else float("inf"),
            "fp32_tflops": (1.0 / inv_f / 1e12) if inv_f > 0 else float("inf"),
            "launch_overhead_us": t_launch * 1e6,
            "fit_mape": float(np.mean(np.abs((x @ (coef / scale)) - y) / y))}


# ---- the report ----------------------------------------------------------------------------------------------------
@dataclass
class _Ctx:
    workload: Workload
    table: str | None
    roofline_device: str
    train: list[tuple[Genome, float]]
    out: Path | None


def build_predictor(name: str, ctx: _Ctx) -> Any:
    """A predictor for validation by short name (lut, roofline, learned, measured) or dotted path."""
    if name == "lut":
        from flashsearch.proxies.latency.lut import LutPredictor

        return LutPredictor(table=ctx.table, device="cpu")
    if name == "roofline":
        from flashsearch.proxies.latency.roofline import RooflinePredictor

        device = ctx.roofline_device
        if device == "cpu":  # the shipped CPU fit lives with the other CPU tables, not among the GPU profiles
            device = str(resources.files("flashsearch.proxies.latency").joinpath("tables").joinpath("roofline_cpu.yaml"))
        return RooflinePredictor(device=device, dtype="fp32")  # the CPU measures fp32
    if name == "learned":
        from flashsearch.proxies.latency.learned import LearnedPredictor, Measurement

        if not ctx.train:
            raise FlashsearchError("learned needs training measurements: use --n-train > 2")
        model = LearnedPredictor.fit([Measurement(g, ctx.workload, s) for g, s in ctx.train], device="cpu",
                                     meta={"what": "fitted by flashsearch latency validate on its training split"})
        if ctx.out is not None:
            model.save(ctx.out / "learned_cpu.json")
        return model
    from flashsearch.builders import LATENCY_PREDICTORS, instantiate

    return instantiate({"_target_": name}, LATENCY_PREDICTORS, "latency", device="cpu")


def validate(predictors: Sequence[str], genomes: Sequence[Genome], measured: Sequence[float], ctx: _Ctx,
             worst: int = 5) -> dict[str, Any]:
    import warnings

    results: dict[str, Any] = {}
    for name in predictors:
        pred = build_predictor(name, ctx)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = [float(pred.predict(g, ctx.workload)) for g in genomes]
        stats = rank_stats(values, measured)
        err = [(p - m) / m for p, m in zip(values, measured)]
        order = sorted(range(len(genomes)), key=lambda i: -abs(err[i]))[:worst]
        results[name] = {
            "source": latency_source(pred), **stats, "predicted": values,
            "warnings": sorted({str(w.message) for w in caught}),
            "worst": [{"index": i, "pattern": genomes[i].summary(), "d_model": genomes[i].d_model,
                       "measured": measured[i], "predicted": values[i], "rel_error": err[i]} for i in order],
        }
        if name == "learned":
            results[name]["n_train"] = len(ctx.train)
            results[name]["train_mape"] = getattr(pred, "train_mape", None)
    return results


def scatter_plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meas = np.asarray(result["measured"]) * 1e3
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, r in result["predictors"].items():
        ax.scatter(meas, np.asarray(r["predicted"]) * 1e3, s=16, alpha=0.8,
                   label=f"{name}: tau {r['kendall_tau']:.2f}, MAPE {r['mape']:.0%}")
    lo, hi = float(meas.min()) * 0.5, float(meas.max()) * 2
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="measured decode latency (ms)", ylabel="predicted (ms)",
           title=f"{len(meas)} genomes, {result['meta']['decode_tokens']} tokens, CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def validate_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `flashsearch latency validate` does; returns the JSON-able result."""
    import pandas as pd

    from flashsearch.builders import build_space
    from flashsearch.config import load_config
    from flashsearch.proxies.latency.profile import cpu_name

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.n < 3 or args.repeats < 1 or args.decode_tokens < 1 or args.prompt_len < 0 or args.vocab < 2:
        raise FlashsearchError("latency validate: --n >= 3, --repeats >= 1, --decode-tokens >= 1, --prompt-len >= 0")
    widths = [int(w) for w in str(args.widths).split(",") if w.strip()]
    space_path = args.space or str(ROOT / "search_spaces" / "hybrid_1b.yaml")
    space = build_space(load_config(space_path, []))
    workload = Workload(device="cpu", batch=1, prompt_len=args.prompt_len, decode_tokens=args.decode_tokens)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if args.measurements:
        # Re-score predictors on earlier measurements (a previous run's measurements.csv), without re-timing.
        df = pd.read_csv(args.measurements)
        val, tr = df[df["split"] == "validation"], df[df["split"] == "train"]
        genomes = [Genome.from_json(j) for j in val["genome_json"]]
        train_genomes = [Genome.from_json(j) for j in tr["genome_json"]]
        measured, train_s = [float(x) for x in val["seconds"]], [float(x) for x in tr["seconds"]]
        workload = Workload(device="cpu", batch=1, prompt_len=int(df["prompt_len"].iloc[0]),
                            decode_tokens=int(df["decode_tokens"].iloc[0]))
    else:
        genomes = sample_small_genomes(space, args.n, args.seed, widths, args.vocab)
        train_genomes = []
        if "learned" in args.predictor and args.n_train > 0:
            train_genomes = sample_small_genomes(space, args.n_train, args.seed + 1000, widths, args.vocab,
                                                 exclude={g.id for g in genomes})
        # One measurement pass over both sets, interleaved, so both see the same machine conditions.
        say(f"validate: measuring {len(genomes)} validation + {len(train_genomes)} training genomes "
            f"({args.decode_tokens} decode tokens after {args.prompt_len}, {args.repeats} rounds, {args.clock} clock)")
        seconds = measure_all(list(genomes) + train_genomes, workload, repeats=args.repeats, clock=args.clock,
                              progress=say)
        measured, train_s = seconds[:len(genomes)], seconds[len(genomes):]
    ctx = _Ctx(workload=workload, table=args.table, roofline_device=args.roofline_device,
               train=list(zip(train_genomes, train_s)), out=out)
    result: dict[str, Any] = {
        "meta": {"space": space_path, "n": len(genomes), "n_train": len(train_genomes), "widths": widths,
                 "vocab": args.vocab, "prompt_len": args.prompt_len, "decode_tokens": args.decode_tokens,
                 "repeats": args.repeats, "seed": args.seed, "device_name": cpu_name(), "threads": 1,
                 "clock": args.clock, "measurements_from": args.measurements,
                 "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
        "measured": measured,
        "genomes": [g.to_json() for g in genomes],
        "predictors": validate(args.predictor, genomes, measured, ctx),
    }
    if out is not None:
        rows = [{"split": split, "genome_json": g.to_json(), "prompt_len": workload.prompt_len,
                 "decode_tokens": workload.decode_tokens, "device": "cpu", "seconds": s}
                for split, gs, ss in (("validation", genomes, measured), ("train", train_genomes, train_s))
                for g, s in zip(gs, ss)]
        pd.DataFrame(rows).to_csv(out / "measurements.csv", index=False)
        result["files"] = {"scatter": str(scatter_plot(result, out / "scatter.png")),
                           "measurements": str(out / "measurements.csv"), "results": str(out / "results.json")}
        (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def print_report(result: dict[str, Any]) -> None:
    m = result["meta"]
    print(f"{m['n']} genomes from {m['space']} at widths {m['widths']}, vocab {m['vocab']}, "
          f"{m['decode_tokens']} decode tokens after {m['prompt_len']}, measured on {m['device_name']}")
    print(f"{'predictor':<12}{'source':<22}{'kendall':>9}{'spearman':>10}{'MAPE':>8}")
    for name, r in result["predictors"].items():
        print(f"{name:<12}{r['source']:<22}{r['kendall_tau']:>9.3f}{r['spearman']:>10.3f}{r['mape']:>8.1%}")
    for name, r in result["predictors"].items():
        print(f"\n{name}: worst {len(r['worst'])}")
        for w in r["worst"]:
            print(f"  d={w['d_model']:<4} measured {w['measured'] * 1e3:8.1f} ms  predicted "
                  f"{w['predicted'] * 1e3:8.1f} ms  ({w['rel_error']:+.0%})  {w['pattern']}")
        for msg in r["warnings"][:3]:
            print(f"  warning: {msg}")
    if "files" in result:
        print(f"\nwrote {result['files']['scatter']}, {result['files']['measurements']}, {result['files']['results']}")


__all__ = ["rank_stats", "sample_small_genomes", "measure_all", "validate", "validate_cli", "build_predictor"]
