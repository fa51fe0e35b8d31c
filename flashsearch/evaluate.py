"""One candidate -> {loss, latency, latency_source, metrics}. Runs inside a Ray task (or in-process).

The evaluator is a small picklable object holding the run's config; the quality proxy and latency predictor are
built lazily once per worker process, so a Ray worker pays their construction (corpus load, device profile)
once, not per trial.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from flashsearch.config import RunConfig
from flashsearch.errors import TrialFailed
from flashsearch.genome import Genome
from flashsearch.user_imports import import_modules

_WORKER_CACHE: dict[int, tuple[Any, Any]] = {}


# What a quality proxy reports about how it trained (QualityResult.extra) that every trial keeps in its metrics.
TRAINING_FACTS = ("fast_path", "cpu_kernel_layers", "precision", "tokens_per_s", "mfu")


@dataclass(frozen=True)
class CandidateEvaluator:
    cfg: RunConfig
    # Multi-fidelity: the absolute folder of rung checkpoints (the controller's out_dir/checkpoints, resolved there,
    # since a Ray worker's working directory may differ; on a multi-node cluster it must be a shared filesystem).
    checkpoint_dir: str | None = None

    def _objectives(self) -> tuple[Any, Any]:
        key = hash(repr(self.cfg))
        if key not in _WORKER_CACHE:
            from flashsearch.builders import build_latency, build_quality

            _WORKER_CACHE[key] = (build_quality(self.cfg), build_latency(self.cfg))
        return _WORKER_CACHE[key]

    def budget(self, rung: int | None) -> Any:
        """The training budget of one evaluation: budget.tokens, or under multi-fidelity rung `rung` of the ladder
        with the run's checkpoint folder, from which promotions continue."""
        from flashsearch.proxies.base import Budget

        b = self.cfg.budget
        if rung is None:
            return Budget(tokens=b.tokens, time_limit_s=b.time_limit_s)
        ladder = b.ladder().tokens
        return Budget(tokens=ladder[rung], time_limit_s=b.time_limit_s, ladder=ladder,
                      checkpoint_dir=self.checkpoint_dir)

    def __call__(self, genome_json: str, rung: int | None = None) -> dict[str, Any]:
        from flashsearch.proxies.base import latency_source

        import_modules(self.cfg.imports)    # in a fresh worker process: register the run's user operators
        genome = Genome.from_json(genome_json)
        quality, latency = self._objectives()
        workload = self.cfg.workload

        t0 = time.perf_counter()
        seconds = float(latency.predict(genome, workload))
        t_latency = time.perf_counter() - t0
        if not math.isfinite(seconds) or seconds <= 0:
            raise TrialFailed(f"latency predictor returned {seconds!r} seconds")

        t0 = time.perf_counter()
        result = quality.evaluate(genome, self.budget(rung))
        t_quality = time.perf_counter() - t0
        loss = float(result.loss)
        if not math.isfinite(loss):
            raise TrialFailed(f"quality proxy returned a non-finite loss ({loss})")

        from flashsearch.model import count_parameters

        return {
            "loss": loss,
            "latency": seconds,
            "latency_source": latency_source(latency),
            "metrics": {
                "quality_metric": result.metric,
                "params": count_parameters(genome),
                "proxy_params": int(result.proxy_params),
                "train_tokens": int(result.tokens),
                # data-parallel ranks that trained it (ray.workers_per_trial; the score does not depend on it)
                "train_workers": int(result.extra.get("workers", 1)),
                **({} if rung is None else {"rung": rung,
                                            "new_tokens": int(result.extra.get("new_tokens", result.tokens))}),
                "quality_seconds": round(t_quality, 3),
                "latency_seconds": round(t_latency, 3),
                "curve": [[int(s), float(v)] for s, v in result.curve],
                # how it trained: the path each operator ran (no silent fallback), precision and throughput
                **{key: result.extra[key] for key in TRAINING_FACTS if key in result.extra},
            },
        }
