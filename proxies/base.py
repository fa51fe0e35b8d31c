"""The two objective plug-in protocols and the small value types they exchange.

Any class with these methods works in a search when named by `_target_` in the YAML; nothing needs to inherit.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome


@dataclass(frozen=True)
class Workload:
    """What latency is asked about: batch-`batch` decoding of `decode_tokens` tokens after a `prompt_len` prompt."""

    device: str = "h100"
    batch: int = 1
    prompt_len: int = 128
    decode_tokens: int = 8192
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        # Checked once here, so no predictor needs its own copy of these checks.
        for name, minimum in (("batch", 1), ("prompt_len", 0), ("decode_tokens", 1)):
            v = getattr(self, name)
            try:
                n = operator.index(v) if not isinstance(v, bool) else None  # ints, numpy ints; not floats/bools
            except TypeError:
                n = None
            if n is None or n < minimum:
                raise FlashsearchError(f"workload.{name} must be an integer >= {minimum}, got {v!r}")
            object.__setattr__(self, name, int(n))


@runtime_checkable
class LatencyPredictor(Protocol):
    """Predicts (or measures) end-to-end decode latency of the FULL-size genome, in seconds."""

    def predict(self, genome: Genome, workload: Workload) -> float: ...


@dataclass(frozen=True)
class Budget:
    """How much a quality proxy may spend on one candidate."""

    tokens: int = 200_000          # training tokens
    time_limit_s: float | None = None
    # Multi-fidelity: the ladder of rung budgets `tokens` belongs to (() = single fidelity). A proxy that can
    # continue training (short_train) trains every rung under one schedule and keeps a checkpoint per rung in
    # `checkpoint_dir`, so rung k+1 starts where rung k's stable phase ended; any other proxy just trains `tokens`.
    ladder: tuple[int, ...] = ()
    checkpoint_dir: str | None = None


@dataclass(frozen=True)
class QualityResult:
    """Outcome of a quality proxy. `loss` is the objective the search minimizes (lower is better)."""

    loss: float                                   # e.g. validation bits per byte
    metric: str = "val_bpb"
    curve: tuple[tuple[int, float], ...] = ()     # (step, training loss) pairs
    proxy_params: int = 0                         # parameters of the model actually trained
    tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@runtime_checkable
class QualityProxy(Protocol):
    """Estimates the quality of a genome cheaply. Raises flashsearch.errors.TrialFailed when it cannot."""

    def evaluate(self, genome: Genome, budget: Budget) -> QualityResult: ...


def latency_source(predictor: object) -> str:
    """The `latency_source` string for a predictor: its `source` attribute, else its class path."""
    src = getattr(predictor, "source", None)
    if isinstance(src, str) and src:
        return src
    cls = type(predictor)
    return f"{cls.__module__}.{cls.__qualname__}"
