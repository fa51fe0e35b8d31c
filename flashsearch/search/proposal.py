"""How aging evolution proposes a child: mutate one factor of the parent, repair, solve the width, avoid duplicates.

Pure over (space, rng, the set of genome ids already in the study): no study access, so it is tested directly.
"""

from __future__ import annotations

import random
from typing import Any

from flashsearch.genome import Genome
from flashsearch.search.latency_target import LatencyTarget
from flashsearch.space import SearchSpace

Params = dict[str, Any]


class Proposer:
    """target: latency-target mode's constraint (None = Pareto mode). In target mode the width is not mutated but
    solved: every proposal sits at the widest width whose predicted latency meets the target."""

    def __init__(self, space: SearchSpace, target: LatencyTarget | None = None, max_dedup_tries: int = 20) -> None:
        self.space = space
        self.target = target
        self.max_dedup_tries = max(1, int(max_dedup_tries))

    def solve_width(self, params: Params) -> Params | None:
        """Target mode: `params` at the widest width meeting the target, None if none does; else unchanged."""
        return params if self.target is None else self.target.widest(params)

    def children(self, parent: Params, rng: random.Random, seen: set[str], k: int,
                 mutate_width: bool) -> list[tuple[Params, str, Genome]]:
        """Up to k distinct children of `parent` whose genomes are not in `seen`: (params, mutated factor, genome),
        in the order found; empty when every mutation tried was known or infeasible."""
        found: dict[str, tuple[Params, str, Genome]] = {}
        for _ in range(self.max_dedup_tries * k):
            child, factor = self.space.mutate(parent, rng, include_width=mutate_width)
            solved = self.solve_width(self.space.repair(child))
            if solved is None:
                continue  # no width meets the target: skipped without training
            genome = self.space.decode(solved)
            if genome.id not in seen and genome.id not in found:
                found[genome.id] = (solved, factor, genome)
                if len(found) >= k:
                    break
        return list(found.values())

    def random_unique(self, rng: random.Random, seen: set[str]) -> tuple[Params, bool]:
        """A random point not yet in the study (in target mode: at its widest feasible width) if one turns up
        within 5 x max_dedup_tries draws; (params, is_new).

        Random draws are the last resort when mutations only find known genomes, so they get more tries: in a
        space with one unseen genome in 10 they miss it with p ~ 1e-5. In target mode a draw no width makes
        feasible is skipped; if every draw was, the space's cheapest point is the fallback (the run checked at
        start that it meets the target)."""
        fallback: Params | None = None
        for _ in range(5 * self.max_dedup_tries):
            params = self.solve_width(self.space.sample(rng))
            if params is None:
                continue
            if self.space.decode(params).id not in seen:
                return params, True
            fallback = fallback or params
        if fallback is None:
            feasible = [p for p in map(self.solve_width, self.space.cheapest()) if p is not None]
            fallback = feasible[0] if feasible else self.space.sample(rng)
        return fallback, False


__all__ = ["Proposer", "Params"]
