"""The quality-latency Pareto front of a trials table, its ranking under a latency target, and hypervolume.

Both objectives are minimized: quality is a loss, latency is seconds.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from flashsearch.trials import complete_trials


def pareto_mask(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boolean mask of non-dominated points (2-D minimization); equal points are all kept. O(n log n)."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    mask = np.zeros(len(pts), dtype=bool)
    if len(pts) == 0:
        return mask
    order = np.lexsort((pts[:, 1], pts[:, 0]))  # by x, then y
    best_y = math.inf
    i = 0
    while i < len(order):
        x = pts[order[i], 0]
        j = i
        while j < len(order) and pts[order[j], 0] == x:
            j += 1
        group_min = pts[order[i], 1]
        if group_min < best_y:  # a strictly-left point with y <= this one would dominate it
            for k in order[i:j]:
                if pts[k, 1] == group_min:
                    mask[k] = True
            best_y = group_min
        i = j
    return mask


def pareto_front(df: pd.DataFrame) -> pd.DataFrame:
    """Non-dominated COMPLETE trials of a trials_frame (minimize quality and latency), one per genome, sorted
    by latency; under multi-fidelity, of the top rung's results only."""
    ok = complete_trials(df, one_per_genome=True)
    if ok.empty:
        return ok.copy()
    mask = pareto_mask(ok[["latency", "quality"]].to_numpy())
    return ok[mask].sort_values(["latency", "quality", "number"]).reset_index(drop=True)


def rank_front(df: pd.DataFrame, target_latency: float | None = None) -> pd.DataFrame:
    """The Pareto front ranked best first: by loss; under a target, the trials meeting it come first."""
    front = pareto_front(df)
    if front.empty:
        return front
    meets = front["latency"] <= target_latency if target_latency is not None else True
    front = front.assign(meets_target=meets)
    return front.sort_values(["meets_target", "quality", "latency", "number"],
                             ascending=[False, True, True, True]).reset_index(drop=True)


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume of 2-D points (both minimized) w.r.t. `reference`; points not better than it add 0."""
    rx, ry = float(reference[0]), float(reference[1])
    pts = np.asarray([p for p in points if p[0] < rx and p[1] < ry], dtype=float).reshape(-1, 2)
    if len(pts) == 0:
        return 0.0
    front = pts[pareto_mask(pts)]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    volume = 0.0
    for i, (x, y) in enumerate(front):
        next_x = front[i + 1, 0] if i + 1 < len(front) else rx
        volume += (next_x - x) * (ry - y)  # slab from this point to the next one to its right
    return float(volume)


__all__ = ["pareto_mask", "pareto_front", "rank_front", "hypervolume"]
