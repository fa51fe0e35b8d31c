"""Cheap plug-ins for tests that run a real `flashsearch run` (put tests/plugins on PYTHONPATH).

SleepyQuality: a quality proxy that sleeps `sleep_s` (stands in for short training), returns a deterministic
loss computed from the genome, and appends "<pid> <genome_id> <parent pid>" to `log` (if given) when an
evaluation starts, so a test can count how often each genome was evaluated across processes (and, on Ray, on which
node: a Ray worker's parent is its node's raylet).
"""

from __future__ import annotations

import os
import time

from flashsearch.genome import Genome
from flashsearch.proxies.base import Budget, QualityResult


def toy_loss(g: Genome) -> float:
    return 3.0 - 0.03 * g.n_mixers - 0.0002 * g.d_model + 0.05 * g.count("attention")


class SleepyQuality:
    def __init__(self, sleep_s: float = 0.3, log: str | None = None, seed: int = 0) -> None:
        self.sleep_s = float(sleep_s)
        self.log = log

    def evaluate(self, genome: Genome, budget: Budget) -> QualityResult:
        if self.log:
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()} {genome.id} {os.getppid()}\n".encode())  # one write: atomic under O_APPEND
            finally:
                os.close(fd)
        time.sleep(self.sleep_s)
        return QualityResult(loss=toy_loss(genome), metric="toy", proxy_params=genome.n_layers, tokens=budget.tokens)
