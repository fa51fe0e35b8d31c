"""Small genomes for latency validation, and their measured CPU decode latency.

Genomes are sampled from a search space, then scaled down to small widths (`ProfileRecipe`: head_dim 32, small
Mamba2 state, a small vocab) so that timing them on a CPU takes seconds; their layer patterns, the thing the
search ranks, are kept. Each genome is measured with MeasuredPredictor(device="cpu") in interleaved rounds
(round r measures every genome before round r+1; the median is kept).
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable, Sequence

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.profile import ProfileRecipe


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
    from flashsearch.proxies.latency.measured import MeasuredPredictor
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


__all__ = ["sample_small_genomes", "measure_all"]
