"""Proxy training speed: seconds per candidate of the fast ShortTrain path vs today's eager fp32 path.

Trains the reference genomes (Flash-1B pattern and the pure-operator + FFN baselines) with the proxy that
search_spaces/hybrid_1b.yaml configures, once with `fast: true` (the default: bf16 projection matmuls, 16-token
chunks, the compiled CPU kernels of kernels/cpu.py) and once with `fast: false` (the eager fp32 path), one thread,
interleaved eager, fast, eager, fast, ... so that load from other processes on a shared machine hits both alike.

Each run is a real ShortTrain.evaluate on a fresh proxy object with `steps` training steps: it pays loading
the corpus, building the model, the steps and the full validation. Seconds per candidate extrapolate the
training steps to the YAML's budget (budget.tokens / (batch_size * seq_len) steps) and add the one-off parts
(corpus, build, validation) as measured. The fast path compiles nothing, so there is no compilation to amortize.
CPU seconds (time.process_time of this process) are reported next to wall seconds: on a loaded machine they
are the better estimate of what an idle core would take. The CPU kernels are compiled once per machine, not per
candidate: the benchmark times a fresh build of them (in a temporary TORCH_EXTENSIONS_DIR) and reports it apart,
with its share per candidate of one search.

    python -m experiments run proxy_speed                   # 5 genomes x 2 paths x 2 rounds, ~10-20 min
    python -m experiments run proxy_speed --quick           # smoke: 8 steps, 1 round, one genome
    python -m experiments run proxy_speed from_csv=true     # re-render the markdown from the CSV
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashsearch.builders import load_genome

from experiments.lib.common import default_proxy
from experiments.lib.output import write_text
from experiments.lib.provenance import header_lines

REFERENCES = {"nemotron_flash_1b": "Flash-1B pattern", "attention_ffn_1b": "attention + FFN",
              "mamba2_ffn_1b": "Mamba2 + FFN", "deltanet_ffn_1b": "DeltaNet + FFN",
              "gated_deltanet_ffn_1b": "Gated DeltaNet + FFN"}
PATHS = ("eager", "fast")


NOTES = """
What the fast path does (each piece was timed per proxy layer, fwd+bwd, before adopting it; the table above is
the measurement that counts; numerics in tests/test_cpu_kernels.py and tests/test_proxy_fast.py):
- compiled CPU kernels (kernels/csrc/cpu_kernels.cpp, built once per machine by torch's cpp_extension): the delta
  rule, the gated delta rule and Mamba2's SSD scan in their recurrent form - a proxy head's 16 x 16 state stays in
  registers, and the backward recomputes 32-token segments from saved states - instead of the chunked torch
  forms' [L, L] tensors and ~100 small ops per layer; the short causal conv + SiLU; causal / sliding-window
  attention for 16-wide heads, where torch's fused CPU attention is mostly blocking overhead; the SwiGLU
  activation on the FFN's bf16 GEMM output;
- projection GEMMs in bf16 with fp32 accumulation, fp32 master weights and residual stream, the linears that read
  the same input as one GEMM; the FFN as one autograd function whose [N, F] intermediates stay bf16 (they are
  rounded to bf16 by the GEMMs anyway);
- 16-token chunks for the chunked torch forms that remain (GLA, and every operator where the kernels cannot be
  built).

Why 3x is not within reach on this CPU: the GEMM floor. The Flash-1B proxy's projections are ~8.5 GFLOP per step
(forward and both backward GEMMs); this core runs bf16 GEMMs of these shapes at ~190 GFLOP/s (512x128x768:
0.54 ms, near its peak; fp32 reaches ~85), so they alone take >= 45 ms per step, while a third of the eager step
(0.245 s on an idle core) is 82 ms. Everything else - 24 layers of norms, activations, recurrent cores,
attention, casts, the optimizer - would have to fit in ~37 ms; it takes ~90 ms now, mostly as ~20 small torch ops
per layer of 10-50 us each. Attention + FFN, whose eager path is mostly fp32 GEMMs already, gains least (1.5x).

Tried and not adopted: torch.compile of one operator block, reused across layers and candidates (FFN 1.28x,
Mamba2 1.24x, attention 0.84x for 25-150 s of compilation per operator type and width); one 128-token chunk for
the chunked cores (2x slower: the [128, 128] tensors are memory passes); the whole model in bf16 (bf16
elementwise ops are slower than fp32 here); glibc malloc tuning (a fresh 512 KB tensor page-faults ~0.3 ms in a
microbenchmark, but the training step reuses its memory: no change).

Numerics: the kernels' maths is that of the torch forms (fp32) in another summation order; against fla's naive
recurrences, torch's SDPA and the fp64 chunked SSD they agree to ~1e-5 in outputs and gradients on awkward lengths
and head sizes. tests/test_proxy_fast.py trains a small hybrid 30 steps both ways: the loss curves agree within
0.03 bits/byte. The val bpb column above, after 48 steps of the full proxies, differs by up to 0.12: at that point
of training the trajectory is sensitive to any rounding change (the same size as the seed noise the recipe
ablation measures). Whether the fast path ranks many genomes like the eager path at the full budget was not
measured; the fidelity studies train on the fast path.
"""


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(name: str, path: str, kwargs: dict[str, Any], steps: int, full_steps: int) -> dict[str, Any]:
    """One ShortTrain.evaluate of `steps` steps on a fresh proxy; per-candidate seconds extrapolated to full_steps."""
    from flashsearch.proxies.base import Budget
    from flashsearch.proxies.quality.short_train import ShortTrain

    proxy = ShortTrain(**{**kwargs, "fast": path == "fast", "threads": 1})
    genome = load_genome(Path("search_spaces/reference") / f"{name}.yaml")
    c0 = time.process_time()
    r = proxy.evaluate(genome, Budget(tokens=steps * proxy.batch_size * proxy.seq_len))
    cpu = time.process_time() - c0
    train = r.extra["train_seconds"]
    one_off = r.seconds - train                          # corpus, model build, validation
    per_candidate = one_off + train * full_steps / steps
    return {"genome": name, "path": path, "tokens": r.tokens, "wall": r.seconds, "cpu": cpu, "train": train, "one_off": one_off,
            "validate": r.extra["validate_seconds"], "tok_s": r.tokens / train, "per_candidate": per_candidate,
            "per_candidate_cpu": per_candidate * cpu / r.seconds, "val_bpb": r.loss}


def kernel_build_seconds() -> float:
    """Wall seconds of a fresh build of the CPU kernels, in a subprocess with an empty extensions folder."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        code = "from flashsearch.kernels import cpu; assert cpu.available()"
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TORCH_EXTENSIONS_DIR": tmp})
        return time.perf_counter() - t0


@dataclass(frozen=True)
class Settings:
    config: str                # YAML whose quality/budget to use
    steps: int                 # training steps measured per run (then extrapolated)
    rounds: int                # eager/fast pairs per genome (medians are reported)
    genomes: tuple[str, ...]   # search_spaces/reference names
    from_csv: bool             # re-render the markdown from out's CSV, train nothing
    out: str                   # folder for proxy_speed.{csv,md}


def main(args: Settings, meta: dict) -> None:

    import torch

    torch.set_num_threads(1)
    kwargs, budget_tokens = default_proxy(args.config)
    kwargs.pop("fast", None)
    unknown = [n for n in args.genomes if n not in REFERENCES]
    if unknown:
        from flashsearch.errors import FlashsearchError

        raise FlashsearchError(f"proxy_speed: unknown genomes {unknown}; choose from {list(REFERENCES)}")
    names = list(args.genomes)
    started = time.perf_counter()
    load_before = load_average()
    rows: list[dict[str, Any]] = []
    csv_path = Path(args.out) / "proxy_speed.csv"
    from flashsearch.proxies.quality.short_train import ShortTrain

    probe = ShortTrain(**kwargs)
    full_steps = budget_tokens // (probe.batch_size * probe.seq_len)
    from flashsearch.config import load_config

    trials = int(load_config(args.config).search.trials)
    build_s = float("nan")
    if args.from_csv:
        import pandas as pd

        frame = pd.read_csv(csv_path)
        rows = frame.to_dict("records")
        names = list(dict.fromkeys(frame["genome"]))
        load_before = str(frame["load"].iloc[0])
        build_s = float(frame["kernel_build_s"].iloc[0]) if "kernel_build_s" in frame else float("nan")
    else:
        build_s = kernel_build_seconds()
        print(f"compiling the CPU kernels from nothing: {build_s:.1f} s", flush=True)
    for rnd in range(0 if args.from_csv else args.rounds):
        for name in names:
            for path in PATHS:                                   # eager, fast, eager, fast, ... (ABAB)
                row = measure(name, path, kwargs, args.steps, full_steps)
                row["round"], row["load"], row["kernel_build_s"] = rnd, load_average(), round(build_s, 1)
                rows.append(row)
                print(f"round {rnd} {name:24s} {path:5s} {row['tok_s']:7.0f} tok/s  "
                      f"{row['per_candidate']:6.1f} s/candidate (cpu {row['per_candidate_cpu']:6.1f})  "
                      f"val {row['val_bpb']:.3f} bpb  load {load_average()}", flush=True)
    load_after = str(rows[-1]["load"]) if args.from_csv else load_average()
    if not args.from_csv:
        import pandas as pd

        Path(args.out).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(csv_path, index=False)
    steps_measured = round(rows[0]["tokens"] / (probe.batch_size * probe.seq_len)) if rows else args.steps
    rounds = max(r["round"] for r in rows) + 1 if rows else 0

    def med(name: str, path: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["genome"] == name and r["path"] == path)

    lines = [
        "# Proxy training speed: fast path vs eager (one thread)\n",
        *header_lines(meta),
        *([f"- runs measured with steps={steps_measured} rounds={rounds}; this page re-rendered from them"]
          if args.from_csv else []),
        f"- finished: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        + ("re-rendered from proxy_speed.csv (the runs below)" if args.from_csv
           else f"{(time.perf_counter() - started) / 60:.1f} min wall"),
        "- torch threads 1",
        f"- load average (1, 5, 15 min) before: {load_before}; after: {load_after} "
        "(a shared machine: the runs interleave eager, fast, eager, fast so load hits both)",
        f"- proxy: {args.config} quality ({kwargs}), budget.tokens {budget_tokens} = {full_steps} steps per "
        f"candidate",
        f"- measured: {steps_measured} training steps per run, medians of {rounds} runs per path; seconds per "
        f"candidate = one-off (corpus load, model build, full validation; measured) + training extrapolated from "
        f"{steps_measured} to {full_steps} steps.",
        f"- compilation: the CPU kernels (kernels/csrc/cpu_kernels.cpp) are built once per machine (`make setup` "
        f"does it), not per candidate; a build from nothing took {build_s:.0f} s wall here, i.e. "
        f"{build_s / trials:.1f} s per candidate of one {trials}-candidate search of {args.config} (not in the "
        f"table; every later search and candidate loads the built module in well under a second).",
        "- eager = `fast: false` (fp32, the genome's chunk sizes: today's path); fast = `fast: true` (default: "
        "bf16 projection matmuls, 16-token chunks, compiled CPU kernels for the delta rules, the SSD scan, the "
        "short convs, attention and the SwiGLU FFN). val bpb: validation loss after the measured steps, same seed and data "
        "for both paths.\n",
        "| genome | eager tok/s | fast tok/s | eager s/candidate | fast s/candidate | speed-up (wall) | "
        "eager CPU s/cand. | fast CPU s/cand. | speed-up (CPU) | val bpb eager / fast |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    speedups, speedups_cpu = [], []
    sums = {p: [0.0, 0.0, 0.0] for p in PATHS}
    for name in names:
        e, f = med(name, "eager", "per_candidate"), med(name, "fast", "per_candidate")
        ec, fc = med(name, "eager", "per_candidate_cpu"), med(name, "fast", "per_candidate_cpu")
        speedups.append(e / f)
        speedups_cpu.append(ec / fc)
        for p, vals in ((("eager"), (med(name, "eager", "tok_s"), e, ec)), ("fast", (med(name, "fast", "tok_s"), f, fc))):
            for i, v in enumerate(vals):
                sums[p][i] += v / len(names)
        lines.append(f"| {REFERENCES.get(name, name)} | {med(name, 'eager', 'tok_s'):.0f} | "
                     f"{med(name, 'fast', 'tok_s'):.0f} | {e:.1f} | {f:.1f} | {e / f:.2f}x | {ec:.1f} | {fc:.1f} | "
                     f"{ec / fc:.2f}x | {med(name, 'eager', 'val_bpb'):.3f} / {med(name, 'fast', 'val_bpb'):.3f} |")
    ea, fa = sums["eager"], sums["fast"]
    lines.append(f"| **average** | {ea[0]:.0f} | {fa[0]:.0f} | {ea[1]:.1f} | {fa[1]:.1f} | {ea[1] / fa[1]:.2f}x | "
                 f"{ea[2]:.1f} | {fa[2]:.1f} | {ea[2] / fa[2]:.2f}x | |")
    lines.append("\nspeed-up of the average = average eager seconds / average fast seconds per candidate.\n")
    flash = [n for n in names if n == "nemotron_flash_1b"]
    flash_cpu = (med(flash[0], "eager", "per_candidate_cpu") / med(flash[0], "fast", "per_candidate_cpu")
                 if flash else float("nan"))
    flash_wall = (med(flash[0], "eager", "per_candidate") / med(flash[0], "fast", "per_candidate")
                  if flash else float("nan"))
    reached = flash_cpu >= 3 and ea[2] / fa[2] >= 3
    lines.append(f"**Target (>= 3x seconds per candidate on the Flash-1B pattern and on the average): "
                 f"{'reached' if reached else 'NOT reached'}** - Flash-1B pattern {flash_cpu:.2f}x, average "
                 f"{ea[2] / fa[2]:.2f}x by CPU seconds (wall: {flash_wall:.2f}x "
                 f"and {ea[1] / fa[1]:.2f}x, dominated by the load of other processes on this shared machine).\n")
    if len(names) >= 3:
        from scipy.stats import spearmanr

        rho = spearmanr([med(n, "eager", "val_bpb") for n in names], [med(n, "fast", "val_bpb") for n in names])[0]
        lines.append(f"Ranking of these {len(names)} genomes by val bpb after the measured steps, fast vs eager: "
                     f"Spearman {rho:.2f} (a weak check: few genomes, few steps).\n")
    lines.append(NOTES)
    lines.append("Runs (every measurement, in order):\n")
    lines.append("| round | genome | path | tok/s | train s | one-off s (of which validation) | wall s | CPU s | "
                 "s/candidate | val bpb |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lines.append(f"| {r['round']} | {r['genome']} | {r['path']} | {r['tok_s']:.0f} | {r['train']:.1f} | "
                     f"{r['one_off']:.1f} ({r['validate']:.1f}) | {r['wall']:.1f} | {r['cpu']:.1f} | "
                     f"{r['per_candidate']:.1f} | {r['val_bpb']:.3f} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "proxy_speed.md", text)
    print(text)

