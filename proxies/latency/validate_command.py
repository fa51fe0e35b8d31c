"""`flashsearch latency validate`: sample and measure genomes, score the predictors, write the JSON, CSV and plot."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.sample import measure_all, sample_small_genomes
from flashsearch.proxies.latency.validate import ValidationContext, fits_on_measurements, validate

ROOT = Path(__file__).resolve().parents[2]


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
    from flashsearch.proxies.latency.machine import cpu_name

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.n < 3 or args.repeats < 1 or args.decode_tokens < 1 or args.prompt_len < 0 or args.vocab < 2:
        raise FlashsearchError("latency validate: --n >= 3, --repeats >= 1, --decode-tokens >= 1, --prompt-len >= 0")
    needs_train = fits_on_measurements(args.predictor)   # also: an unknown predictor fails before any timing
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
        names = sorted({str(x) for x in df.get("device_name", pd.Series(dtype=str)).dropna()})
        measured_on = " + ".join(names) if names else f"not recorded in {args.measurements}"
    else:
        measured_on = cpu_name()
        genomes = sample_small_genomes(space, args.n, args.seed, widths, args.vocab)
        train_genomes = []
        if args.n_train > 0 and needs_train:
            train_genomes = sample_small_genomes(space, args.n_train, args.seed + 1000, widths, args.vocab,
                                                 exclude={g.id for g in genomes})
        # One measurement pass over both sets, interleaved, so both see the same machine conditions.
        say(f"validate: measuring {len(genomes)} validation + {len(train_genomes)} training genomes "
            f"({args.decode_tokens} decode tokens after {args.prompt_len}, {args.repeats} rounds, {args.clock} clock)")
        seconds = measure_all(list(genomes) + train_genomes, workload, repeats=args.repeats, clock=args.clock,
                              progress=say)
        measured, train_s = seconds[:len(genomes)], seconds[len(genomes):]
    ctx = ValidationContext(workload=workload, table=args.table, roofline_device=args.roofline_device,
                            train=list(zip(train_genomes, train_s)), out=out,
                            measured_on=None if measured_on.startswith("not recorded") else measured_on)
    result: dict[str, Any] = {
        "meta": {"space": space_path, "n": len(genomes), "n_train": len(train_genomes), "widths": widths,
                 "vocab": args.vocab, "prompt_len": args.prompt_len, "decode_tokens": args.decode_tokens,
                 "repeats": args.repeats, "seed": args.seed, "device_name": measured_on, "threads": 1,
                 "clock": args.clock, "measurements_from": args.measurements,
                 "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
        "measured": measured,
        "genomes": [g.to_json() for g in genomes],
        "predictors": validate(args.predictor, genomes, measured, ctx),
    }
    if out is not None:
        rows = [{"split": split, "genome_json": g.to_json(), "prompt_len": workload.prompt_len,
                 "decode_tokens": workload.decode_tokens, "device": "cpu", "device_name": measured_on, "seconds": s}
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


__all__ = ["validate_cli", "print_report", "scatter_plot"]
