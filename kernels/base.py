"""The one small interface every operator implements, and what a decode step costs.

An operator maps the residual stream [B, T, D] -> [B, T, D] (the model adds the residual and the pre-norm).
It has two forms that must agree:
  forward(x)          chunked-parallel form for training and prefill (no per-token Python loops);
  step(x_t, state)    recurrent single-token form for decoding, carrying a state (KV cache, SSM state, ...).
`decode_cost` describes one decode step analytically for the roofline latency predictor, so adding an
operator is one new file here and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome


@dataclass(frozen=True)
class DecodeCost:
    """Work of ONE decode step of ONE layer at batch 1, with `context` tokens already in the state.

    Element counts (not bytes) so the predictor chooses the dtype. `launches` = GPU kernels per step.
    """

    weight_elems: int            # parameters read once per step
    state_read_elems: int        # KV cache / recurrent state / conv state read per step
    state_write_elems: int       # state written per step (new KV row, updated recurrent state)
    flops: float                 # multiply-adds x 2
    launches: int                # kernels launched per step (fast-path implementation)


class Operator(nn.Module):
    """Base class of token mixers and the FFN. Subclasses set `name` and `defaults`."""

    name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, genome: Genome):
        super().__init__()
        self.opts = resolve_options(type(self), genome)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        raise NotImplementedError

    def init_state(self, batch: int, max_len: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Any:
        """Empty decode state for `batch` sequences of up to `max_len` tokens (None if stateless, e.g. FFN)."""
        return None

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:  # x: [B, 1, D]
        raise NotImplementedError

    @classmethod
    def decode_cost(cls, genome: Genome, context: int) -> DecodeCost:
        raise NotImplementedError


def resolve_options(cls: type[Operator], genome: Genome) -> dict[str, Any]:
    """The operator's defaults overlaid with the genome's op_options[cls.name]; unknown keys are errors."""
    given = dict(genome.options(cls.name))
    unknown = sorted(set(given) - set(cls.defaults))
    if unknown:
        allowed = ", ".join(sorted(cls.defaults)) or "none"
        raise FlashsearchError(
            f"operator {cls.name!r} does not support option(s) {', '.join(unknown)} (in op_options.{cls.name}); "
            f"supported: {allowed}"
        )
    return {**cls.defaults, **given}
