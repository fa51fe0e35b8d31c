"""SwiGLU feed-forward (channel mixer): down(silu(gate(x)) * up(x)), hidden = genome.ffn_hidden."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flashsearch.genome import Genome

from . import cpu
from ._common import SWIGLU, fused_linear, layer_cost, step_kernel
from .base import DecodeCost, Operator


class FFN(Operator):
    """SwiGLU MLP. Stateless: step is forward on one token."""

    name: ClassVar[str] = "ffn"
    letter: ClassVar[str] = "F"
    role: ClassVar[str] = "ffn"
    aliases: ClassVar[tuple[str, ...]] = ("mlp",)
    uses_cpu_kernels: ClassVar[bool] = True
    readers: ClassVar[tuple[str, ...]] = ("gate_proj", "up_proj")
    writers: ClassVar[tuple[str, ...]] = ("down_proj",)
    supports_padding: ClassVar[bool] = True        # per token: a pad changes nothing else

    def __init__(self, genome: Genome):
        super().__init__(genome)
        d, f = genome.d_model, genome.ffn_hidden
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # The proxy's bf16 path (its linears switched to bf16 matmuls) with the CPU kernels: one fused function.
        if getattr(self.down_proj, "matmul_dtype", None) is torch.bfloat16 and self.cpu_kernel_applies(x):
            self._ran("cpu_kernel.swiglu_bf16")
            return cpu.swiglu_bf16(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
        self._ran("torch")
        gate, up = fused_linear(x, self.gate_proj, self.up_proj)       # [B, T, F] each
        return self.down_proj(F.silu(gate) * up)                        # [B, T, D]

    # Triton kernels the fused step launches per call (the kernel census, experiments/kernel_census).
    step_kernels: ClassVar[dict[tuple[str, str], int]] = {SWIGLU: 1}

    def step(self, x: torch.Tensor, state: Any, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """forward on one token; on CUDA (inference) silu(gate) * up is fla's one-kernel swiglu."""
        fn = step_kernel(*SWIGLU, x, None)
        if fn is None:
            return self.forward(x), state
        self._ran("fla.swiglu")
        gate, up = fused_linear(x, self.gate_proj, self.up_proj)
        return self.down_proj(fn(gate, up)), state

    def prefill(self, x: torch.Tensor, state: Any, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        return self.forward(x), state

    @classmethod
    def decode_cost(cls, genome: Genome, context: int) -> DecodeCost:
        cls.options_of(genome)                                              # unknown options are errors here too
        d, f = genome.d_model, genome.ffn_hidden
        weights = 3 * d * f
        # Fused gate|up GEMM, silu*mul, down GEMM.
        return layer_cost(d, weights, 0, 0, flops=2 * weights + 3 * f, launches=3)
