"""Maximum-batch decode throughput: the largest batch whose static decode fits in memory, and its tokens/s.

Batch search: 1, 2, 4, ... until a batch runs out of memory or max_batch is reached, then bisection between the
last fitting and the first failing batch. A batch "fits" when its states for prompt + decode_tokens are
allocated, its prompt prefilled and a step at the longest attended length runs (`MeasuredPredictor._fits`). The
largest fitting batch is then timed like `MeasuredPredictor.measure` (median of `repeats`), stepping down by 10%
if the timing itself (CUDA graphs need their own memory) runs out. max_batch defaults to 4096 on CUDA and 64 on
CPU (CPU memory is not probed: the bound is what stops the search).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload

if TYPE_CHECKING:
    from .measured import MeasuredPredictor


@dataclass(frozen=True)
class ThroughputResult:
    """Decode throughput at the largest batch that fit. limited_by: "memory" (a larger batch ran out of memory)
    or "max_batch" (the search bound was reached without running out)."""

    batch: int
    tokens_per_s: float
    seconds: float                # median seconds to decode decode_tokens tokens at `batch`
    decode_tokens: int
    limited_by: str
    source: str


def largest_fitting_batch(fits: Callable[[int], bool], max_batch: int) -> tuple[int, int | None]:
    """(lo, hi): lo the largest batch <= max_batch known to fit (0: none), hi the smallest known not to (None:
    the bound was reached), by doubling then bisection; `fits` is called O(log max_batch) times."""
    lo, hi = 0, None
    b = 1
    while True:
        if fits(b):
            lo = b
            if b >= max_batch:
                break
            b = min(2 * b, max_batch)
        else:
            hi = b
            break
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
    return lo, hi


def max_batch_throughput(pred: MeasuredPredictor, genome: Genome, workload: Workload,
                         max_batch: int | None = None) -> ThroughputResult:
    """Search the batch with `pred`'s device and settings, then time it (workload.batch is ignored)."""
    from .measured import _OOM, _positive_int

    pred._check_size(genome)
    if max_batch is None:
        max_batch = 4096 if pred.device.type == "cuda" else 64
    max_batch = _positive_int("max_batch", max_batch)
    with pred._context():
        model = pred._build(genome)
        lo, hi = largest_fitting_batch(lambda b: pred._fits(model, genome, workload, b), max_batch)
        if lo == 0:
            raise FlashsearchError(f"measured: batch 1 of this genome does not fit in {pred.device} memory "
                                   f"for {workload.prompt_len}+{workload.decode_tokens} tokens")
        batch = lo
        while True:                      # graphs need their own memory: step down if timing runs out
            try:
                times = pred._time_decode(model, genome, workload, batch)
                break
            except _OOM:
                pred._free()
                if batch == 1:
                    raise
                hi, batch = batch, max(1, int(batch * 0.9))
    seconds = float(statistics.median(times))
    return ThroughputResult(batch=batch, tokens_per_s=batch * workload.decode_tokens / seconds, seconds=seconds,
                            decode_tokens=workload.decode_tokens,
                            limited_by="memory" if hi is not None else "max_batch", source=pred.source)


__all__ = ["ThroughputResult", "largest_fitting_batch", "max_batch_throughput"]
