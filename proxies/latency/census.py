"""Kernel census of one decode step: how many kernels the measured decoder's step launches, per operator type,
next to what the roofline charges (`decode_cost(...).launches`, and 4 for the head).

The step is `StaticDecoder.step` (what measured latency times and captures in CUDA graphs). Every ATen operator it
dispatches is counted (TorchDispatchMode), except those that launch no kernel: views (`OpOverload.is_view`) and
bare allocations (empty*). On CUDA, Triton launches (fla, mamba-ssm) are counted too, by wrapping
`JITFunction.run` (C++ extension kernels such as causal-conv1d's are not seen there). By default the model is built
on the `meta` device: no memory, no arithmetic, any size, and the ops dispatched are those of the torch step
forms, i.e. the CPU path. The CUDA step (fused recurrent kernels, fused norms) is counted by the `kernel_census`
study (experiments/kernel_census), which stands in for each fused kernel with the launches its operator declares.
One ATen op is about one CUDA kernel; a few launch two (e.g. a GEMM with a split-K reduction), so the census is a
close lower bound.

    python -m flashsearch.proxies.latency.census search_spaces/reference/nemotron_flash_1b.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flashsearch.genome import Genome

HEAD = "embedding+lm_head"
HEAD_CHARGE = 4                                   # the roofline's head: embedding, final norm, LM head, sampling
_NO_KERNEL = ("aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.detach",
              "aten.lift_fresh", "aten.alias")


@dataclass(frozen=True)
class OpCensus:
    """Kernels of one operator type in one decode step."""

    op: str
    layers: int                   # 0 for the head
    kernels: int                  # all its layers together
    charged: int                  # what the roofline charges, all layers together
    top: tuple[tuple[str, int], ...]  # most frequent kernels (name, count), all layers together

    @property
    def ratio(self) -> float:
        return self.kernels / self.charged if self.charged else float("inf")


class _Counter(TorchDispatchMode):
    """Counts kernel-launching ATen ops, and the launches stand-ins declare (`add`), per operator label."""

    def __init__(self) -> None:
        super().__init__()
        self.label = HEAD
        self.counts: dict[str, Counter] = {}

    def add(self, name: str) -> None:
        self.counts.setdefault(self.label, Counter())[name] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket)
        if not func.is_view and not name.startswith(_NO_KERNEL):
            self.add(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _triton_launches(counter: _Counter) -> Iterator[None]:
    """Count every Triton kernel launch (JITFunction.run) as one kernel, when triton is importable."""
    try:
        from triton.runtime.jit import JITFunction
    except Exception:  # noqa: BLE001 - no triton: nothing to count
        yield
        return
    run = JITFunction.run

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        counter.add(f"triton.{self.fn.__name__}")
        return run(self, *args, **kwargs)

    JITFunction.run = counted
    try:
        yield
    finally:
        JITFunction.run = run


def decode_step_census(genome: Genome, context: int = 64, batch: int = 1, device: str = "meta",
                       dtype: torch.dtype = torch.bfloat16, fused: bool = False, warmup_steps: int = 0,
                       top: int = 6) -> list[OpCensus]:
    """Kernels per operator type of one decode step after `context` tokens (in order of first appearance, then
    the head), with the roofline's charge for the same step and the `top` most frequent kernels of each.

    fused: count the CUDA path on any device (cuda_stand_ins.cuda_path: each fused kernel counted as the launches
    its operator declares). warmup_steps: steps taken before the counted one (caches built on a first step, as
    before a CUDA graph is captured)."""
    from flashsearch import kernels
    from flashsearch.model import HybridLM

    from .cuda_stand_ins import cuda_path
    from .static_decoder import StaticDecoder

    path = cuda_path if fused else contextlib.nullcontext
    dev = torch.device(device)
    with path(), dev:                          # operators pick their path when built
        model = HybridLM(genome)
    model = model.to(dtype).eval()
    counter = _Counter()
    with path(), torch.inference_mode():
        dec = StaticDecoder(model, batch, context + 2 + warmup_steps, dev, dtype)
        dec.reset(torch.zeros(batch, max(1, context), dtype=torch.long, device=dev))
        for _ in range(warmup_steps):
            dec.step(dec.kv_len(1))
            dec.pos_host += 1
        for block, op in zip(model.layers, genome.layer_types):   # a layer: its operator, add + next norm
            block.step = _labelled(block.step, counter, op)
            block.step_fused = _labelled(block.step_fused, counter, op)
        with counter, _triton_launches(counter):
            dec.step(dec.kv_len(1))
    rows = []
    for op in dict.fromkeys(genome.layer_types):
        n = genome.count(op)
        c = counter.counts.get(op, Counter())
        charged = kernels.decode_cost(genome, op, context).launches * n
        rows.append(OpCensus(op=op, layers=n, kernels=sum(c.values()), charged=charged, top=tuple(c.most_common(top))))
    head = counter.counts.get(HEAD, Counter())
    rows.append(OpCensus(op=HEAD, layers=0, kernels=sum(head.values()), charged=HEAD_CHARGE,
                         top=tuple(head.most_common(top))))
    return rows


def _labelled(step: Any, counter: _Counter, op: str) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        counter.label = op
        try:
            return step(*args, **kwargs)
        finally:
            counter.label = HEAD
    return run


def format_census(rows: list[OpCensus]) -> str:
    lines = ["| operator | layers | kernels per step | roofline charges | ratio | most frequent |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        top = ", ".join(f"{name.removeprefix('aten.')} {k}" for name, k in r.top)
        lines.append(f"| {r.op} | {r.layers} | {r.kernels} | {r.charged} | {r.ratio:.1f} | {top} |")
    k, c = sum(r.kernels for r in rows), sum(r.charged for r in rows)
    lines.append(f"| total | {sum(r.layers for r in rows)} | {k} | {c} | {k / c:.1f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from flashsearch.builders import load_genome

    ap = argparse.ArgumentParser(prog="python -m flashsearch.proxies.latency.census",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("genome", nargs="+", help="genome YAML file(s)")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--device", default="meta", help="meta (default: counts without computing) or cuda")
    args = ap.parse_args(argv)
    for path in args.genome:
        print(f"{path}\n\n{format_census(decode_step_census(load_genome(path), args.context, device=args.device))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
