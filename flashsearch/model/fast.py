"""Faster CPU training of proxy models: the compiled CPU kernels (flashsearch.kernels.cpu, switched on per
operator by `cpu_kernels_`), small chunks for the chunked cores that remain, and the projections' matmuls in
bf16 with everything else in fp32.

Chunk size: the chunked forms (Mamba2's SSD, the delta rules, GLA) do O(T * L) elementwise work inside chunks
of L tokens and a loop or carry across T / L chunks. At the proxy's short sequences and small heads the L x L
intra-chunk tensors dominate, so where an operator still runs its chunked form (no CPU kernel for it, or inputs
the kernels do not take) a small L (PROXY_CHUNK_SIZE) trains faster than the default. The chunked form is exact
for any L, so this changes rounding only.

On a CPU with native bf16 GEMMs (AVX512-BF16 or AMX; `cpu_has_bf16`) a bf16 GEMM is faster than fp32, and the
projections are most of a proxy's FLOPs. Unlike torch.autocast this touches only the nn.Linear layers: the
recurrent cores (delta rule, SSD scan), norms, softmax and the residual stream stay fp32, and no op without a
bf16 kernel (triangular solve) sees bf16. Master weights, gradients and optimizer state stay fp32; only the
matmul inputs are rounded to bf16 (accumulation inside the GEMM is fp32). Measured speeds: the results of
experiments/proxy_speed and experiments/kernel_bench.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from flashsearch.genome import Genome

BF16 = torch.bfloat16
PROXY_CHUNK_SIZE = 16


def with_proxy_chunk_size(genome: Genome, seq_len: int, chunk_size: int = PROXY_CHUNK_SIZE) -> Genome:
    """The genome with chunk_size = min(chunk_size, seq_len) for every chunked operator it uses."""
    import dataclasses

    from flashsearch import operators

    size = min(chunk_size, seq_len)
    for name in dict.fromkeys(genome.layer_types):
        spec = operators.spec(name)
        if any(f.name == "chunk_size" for f in dataclasses.fields(spec.options)):
            genome = genome.with_options(spec.name, chunk_size=size)
    return genome


class _Bf16Linear(torch.autograd.Function):
    """y = x W^T with x, W rounded to bf16; y and both gradients returned in the input's dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # x [..., in], weight [out, in]
        xb, wb = x.to(BF16), weight.to(BF16)
        ctx.save_for_backward(xb, wb)
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        return F.linear(xb, wb).to(x.dtype)                                 # [..., out]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        xb, wb = ctx.saved_tensors
        gb = grad.to(BF16)                                                  # [..., out]
        gx = (gb @ wb).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            gw = (gb.reshape(-1, gb.shape[-1]).t() @ xb.reshape(-1, xb.shape[-1])).to(ctx.w_dtype)  # [out, in]
        return gx, gw


class _Bf16SharedInputLinears(torch.autograd.Function):
    """Several bias-free linears reading the same x as ONE bf16 GEMM against their stacked weights.

    Converting the weights to bf16 copies them anyway, so stacking them costs nothing extra, and one GEMM
    instead of n saves n-1 conversions of x, n-1 GEMM calls in each direction and the sum of the n input
    gradients (the proxy's GEMMs are small enough that per-call overhead is a large share)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:  # weights [out_i, in]
        xb = x.to(BF16)
        wb = torch.cat([w.to(BF16) for w in weights])                      # [sum out_i, in]
        ctx.save_for_backward(xb, wb)
        ctx.sizes = [w.shape[0] for w in weights]
        ctx.x_dtype, ctx.w_dtype = x.dtype, weights[0].dtype
        y = F.linear(xb, wb).to(x.dtype)                                    # [..., sum out_i]
        return tuple(t.contiguous() for t in y.split(ctx.sizes, dim=-1))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        xb, wb = ctx.saved_tensors
        lead = xb.shape[:-1]
        gb = torch.cat([(g if g is not None else xb.new_zeros(*lead, n)).to(BF16)
                        for g, n in zip(grads, ctx.sizes)], dim=-1)         # [..., sum out_i]
        gx = (gb @ wb).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        gw_all = (gb.reshape(-1, gb.shape[-1]).t() @ xb.reshape(-1, xb.shape[-1])).to(ctx.w_dtype)
        gws = tuple(gw if need else None
                    for gw, need in zip(gw_all.split(ctx.sizes), ctx.needs_input_grad[1:]))
        return (gx, *gws)


class Bf16Linear(nn.Linear):
    """nn.Linear whose matmul runs in bf16 (same parameters and state_dict as nn.Linear)."""

    matmul_dtype = BF16                 # what operators read to choose a bf16-aware kernel (the FFN's SwiGLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _Bf16Linear.apply(x, self.weight)
        return y if self.bias is None else y + self.bias

    @staticmethod
    def shared_input(x: torch.Tensor, linears: tuple[nn.Linear, ...]) -> list[torch.Tensor] | None:
        """fused_linear's hook: the outputs of several bias-free Bf16Linears on x from one GEMM, or None
        when they do not qualify (then each runs on its own)."""
        if len(linears) < 2 or any(type(lin) is not Bf16Linear or lin.bias is not None for lin in linears):
            return None
        return list(_Bf16SharedInputLinears.apply(x, *(lin.weight for lin in linears)))


def cpu_kernels_(model: nn.Module) -> int:
    """Let every operator in `model` that has compiled CPU kernels (the delta rules, Mamba2's scan and their short
    convs, attention, the FFN; kernels/cpu.py) use them for fp32 CPU inputs; returns how many operators were
    switched, 0 when the kernels cannot be built here (then the torch forms run, as before)."""
    from flashsearch.kernels import Operator, cpu

    if not cpu.available():
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, Operator) and type(module).uses_cpu_kernels:
            module.cpu_kernels = True
            n += 1
    return n


def bf16_linears_(model: nn.Module) -> int:
    """Switch every nn.Linear in `model` to the bf16 matmul in place; returns how many were switched.
    The parameters are untouched (the class changes, not the tensors), so optimizers and checkpoints see
    the same model."""
    n = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Bf16Linear
            n += 1
    return n


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 GEMMs natively (AVX512-BF16 or AMX); without it bf16 is emulated and slower."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX") and _bf16_flag()


def _bf16_flag() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
