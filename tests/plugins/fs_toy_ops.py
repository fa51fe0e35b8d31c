"""A user's token mixer, defined outside flashsearch: importing this module registers operator 'cummean'.

CumMean: y_t = o_proj(scale * mean_{s <= t} v_proj(x_s)), a causal running mean of projected tokens (a crude
linear-attention relative with no keys). Decoding carries the running sum and the token count.
Used by tests/test_plugin_operator.py through the config key `imports: [fs_toy_ops]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flashsearch.genome import Genome
from flashsearch.kernels import DecodeCost, Operator
from flashsearch.operators import option


@dataclass
class CumMeanState:
    total: torch.Tensor          # [B, D] sum of v over the tokens seen
    count: int = 0               # tokens seen (all sequences advance together)


class CumMean(Operator):
    name = "cummean"
    letter = "CM"
    role = "mixer"
    aliases = ("running_mean",)

    @dataclass(frozen=True)
    class Options:
        scale: float = option(1.0, gt=0)          # multiplies the mean before o_proj
        bias: bool = False                        # biases on the projections

    readers = ("v_proj",)
    writers = ("o_proj",)

    def __init__(self, genome: Genome):
        super().__init__(genome)
        d = genome.d_model
        self.v_proj = nn.Linear(d, d, bias=self.opts.bias)
        self.o_proj = nn.Linear(d, d, bias=self.opts.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                      # [B, T, D] -> [B, T, D]
        v = self.v_proj(x)                                                     # [B, T, D]
        n = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=v.dtype)   # [T] tokens seen at t
        return self.o_proj(self.opts.scale * v.cumsum(dim=1) / n[:, None])

    def init_state(self, batch: int, max_len: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> CumMeanState:
        return CumMeanState(total=torch.zeros(batch, self.v_proj.out_features, device=device, dtype=dtype))

    def step(self, x: torch.Tensor, state: CumMeanState) -> tuple[torch.Tensor, Any]:  # x [B, 1, D]
        total = state.total + self.v_proj(x[:, 0])
        count = state.count + 1
        y = self.o_proj(self.opts.scale * total / count)[:, None]
        return y, CumMeanState(total=total, count=count)

    @classmethod
    def decode_cost(cls, genome: Genome, context: int) -> DecodeCost:
        cls.options_of(genome)                                                # bad options fail here too
        d = genome.d_model
        weights = 2 * d * d
        return DecodeCost(weight_elems=weights, state_read_elems=d, state_write_elems=d,
                          flops=2.0 * weights + 3 * d, launches=3)
