"""Kernel census of the CUDA decode step, counted on CPU: kernels one StaticDecoder.step launches per operator type
on the fused path (fla fused-recurrent steps, mamba-ssm selective_state_update, causal-conv1d's conv update, the
stacked QKV / gate-up GEMMs), next to what the roofline charges; target <= 2x.

How it counts without a GPU: the model is built on the `meta` device (no memory, any size) with the operators'
CUDA predicate forced on and every fused kernel replaced by a stand-in that honours the kernel's contract (shapes,
dtypes, the state written in place) and counts the launches its operator declares next to its step
(`Operator.step_kernels`; the stand-ins live in proxies/latency/cuda_stand_ins.py); proxies/latency/census.py
counts every other ATen op the step dispatches (one op ~ one kernel; views and bare allocations excluded) after one
warm-up step, as a CUDA graph is captured after warm-up. The stand-ins' own arithmetic is not counted.

    python -m experiments run kernel_census
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from experiments.lib.output import header, write_text
from experiments.lib.provenance import ROOT

REF = ROOT / "search_spaces" / "reference"


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]       # reference genomes (search_spaces/reference/<name>.yaml)
    context: int                  # tokens already decoded (the roofline's charge is per step, whatever the context)
    target_ratio: float           # kernels per step / roofline charge, at most
    out: str


def census(genome: Any, context: int) -> list[Any]:
    """The CUDA-path census of one genome as this study counts it: one steady-state step after a warm-up."""
    from flashsearch.proxies.latency.census import decode_step_census

    return decode_step_census(genome, context, fused=True, warmup_steps=1, top=8)


def main(args: Settings, meta: dict) -> None:
    from flashsearch.builders import load_genome
    from flashsearch.proxies.latency.census import format_census

    lines = [header("Kernel census of the CUDA decode step (counted on CPU)", meta), "",
             f"One StaticDecoder.step at batch 1 after {args.context} tokens, bf16, on the fused path (stand-ins "
             "for the fla / mamba-ssm / causal-conv1d kernels, counted as the launches their operators declare). "
             f"Target: at most {args.target_ratio:g}x the roofline's charge.", ""]
    summary = ["| model | kernels per step | roofline charges | ratio | target met |", "|---|---|---|---|---|"]
    for name in args.models:
        rows = census(load_genome(REF / f"{name}.yaml"), args.context)
        k, c = sum(r.kernels for r in rows), sum(r.charged for r in rows)
        summary.append(f"| {name} | {k} | {c} | {k / c:.2f} | {'yes' if k <= args.target_ratio * c else 'NO'} |")
        lines += [f"## {name}", "", format_census(rows), ""]
    write_text(f"{args.out}/kernel_census.md", "\n".join(lines[:4] + summary + [""] + lines[4:]))
