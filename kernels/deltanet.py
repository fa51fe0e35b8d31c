"""DeltaNet (as used in Nemotron-Flash): linear attention with the delta-rule state update.

Per head, with state S [dk, dv], L2-normalized key k_t, query q_t and write strength beta_t in (0, 1):
    S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T         (replace what S stores under k_t)
    o_t = S_t^T (scale * q_t)
Training uses the chunked WY / UT-transform form: inside a chunk of L tokens the corrected values
u = beta (v - S_0^T k - earlier in-chunk corrections) solve one unit lower-triangular system, so the chunk
reduces to a few batched matmuls; only S is carried from chunk to chunk (a loop over chunks, not tokens).
Layer: q/k/v projections -> short causal conv + SiLU -> L2-norm(q, k); beta = sigmoid(b_proj x);
per-head output RMSNorm; o_proj. No output gate. On CUDA, fla's chunk_delta_rule replaces the torch core for
bf16/fp16 inputs when it imports (fla refuses fp32, so fp32 stays on the torch form).
Padded batches (`mask`): k = 0 and beta = 0 at a pad leave S unchanged (what fla's cu_seqlens achieve by
skipping it), and the short conv runs over each row's real tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flashsearch.genome import Genome
from flashsearch.operators import option

from . import cpu
from ._common import (CONV_UPDATE, RMSNorm, ShortConv, acc_dtype, cuda_kernel, fused_linear, joined, keep_pads, l2norm,
                      layer_cost, on_cuda, outside_autocast, pad_time, refused, step_kernel, step_refused, write_state,
                      zero_pads)
from .base import DecodeCost, Operator


# fla's Triton delta-rule kernel and the dtypes it accepts (chunk_delta_rule asserts q is not fp32).
FLA_DELTA_RULE = ("fla.ops.delta_rule", "chunk_delta_rule")
FLA_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)
# The decode step's kernel: one launch per step for all heads (q/k L2-norm inside), state read and written once.
FLA_DELTA_STEP = ("fla.ops.delta_rule", "fused_recurrent_delta_rule")


# ---- the delta-rule core -----------------------------------------------------------------------------------
@outside_autocast
def delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, chunk_size: int = 64,
                       scale: float | None = None, initial_state: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked delta rule. q, k [b, t, h, dk] (k normalized by the caller); v [b, t, h, dv]; beta [b, t, h];
    scale defaults to dk**-0.5 (applied to q); initial_state [b, h, dk, dv] or None.
    Returns o [b, t, h, dv] and the final state [b, h, dk, dv]. fla's layout (chunk_delta_rule); same maths and
    scale as fla.ops.delta_rule.naive.delta_rule_recurrence (which takes [b, h, t, d])."""
    b, t, h, dk = q.shape
    # Per-head matmuls below want heads before time: [b, h, t, d] inside (one copy each, not one per matmul),
    # [b, t, h, d] at the boundary.
    q, k, v, beta = (z.transpose(1, 2).contiguous() for z in (q, k, v, beta))
    dv = v.shape[-1]
    L = chunk_size
    q = q * (dk ** -0.5 if scale is None else scale)
    # Zero padding at the end is exact: k = 0 and beta = 0 leave S unchanged; padded outputs are dropped.
    q, k, v, beta = (pad_time(z, L, 2) for z in (q, k, v, beta))
    nc = q.shape[2] // L
    q, k, v = (z.view(b, h, nc, L, z.shape[-1]) for z in (q, k, v))         # [b, h, nc, L, d]
    beta = beta.view(b, h, nc, L, 1)
    kb, vb = k * beta, v * beta

    # UT transform: (I + strict_tril(diag(beta) K K^T)) [W | U] = [diag(beta) K | diag(beta) V]
    # gives u_c = U_c - W_c S for the state S entering chunk c.
    ones = torch.ones(L, L, dtype=torch.bool, device=q.device)
    A = (kb @ k.transpose(-1, -2)).masked_fill(~ones.tril(-1), 0.0)          # [b, h, nc, L, L]
    WU = torch.linalg.solve_triangular(A, torch.cat([kb, vb], dim=-1), upper=False, unitriangular=True)
    W, U = WU.split([dk, dv], dim=-1)                                         # [b, h, nc, L, dk], [.., dv]
    qk = (q @ k.transpose(-1, -2)).masked_fill(~ones.tril(), 0.0)            # [b, h, nc, L, L] causal

    S = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(q.dtype)
    outs = []
    # unbind, not U[:, :, c]: the backward of unbind is one stack, that of each indexing a full-size zero fill.
    for q_c, k_c, W_c, U_c, qk_c in zip(*(z.unbind(2) for z in (q, k, W, U, qk))):  # sequential over chunks only
        u = U_c - W_c @ S                                                    # [b, h, L, dv]
        outs.append(q_c @ S + qk_c @ u)                                      # [b, h, L, dv]
        S = S + k_c.transpose(-1, -2) @ u                                    # [b, h, dk, dv]
    o = torch.stack(outs, dim=2).view(b, h, nc * L, dv)[:, :, :t]
    return o.transpose(1, 2), S                                               # [b, t, h, dv]


@outside_autocast
def delta_rule_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, state: torch.Tensor,
                    scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step on one time slice of the [b, t, h, d] layout: q, k [b, h, dk]; v [b, h, dv]; beta [b, h];
    state [b, h, dk, dv]. Returns o [b, h, dv] and the new state."""
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    old = (k.unsqueeze(-2) @ state).squeeze(-2)                              # S^T k: [b, h, dv]
    u = beta[..., None] * (v - old)
    state = state + k[..., :, None] * u[..., None, :]                        # rank-1 update
    o = (q.unsqueeze(-2) @ state).squeeze(-2)                                # [b, h, dv]
    return o, state


# ---- the layer -------------------------------------------------------------------------------------------------
@dataclass
class DeltaNetState:
    """conv: last conv_size-1 inputs of the q|k|v convs, [B, 3*H*hd, K-1]; S: [B, H, hd, hd] (>= fp32)."""

    conv: torch.Tensor
    S: torch.Tensor


class DeltaNet(Operator):
    """DeltaNet token mixer with n_heads x head_dim from the genome."""

    name: ClassVar[str] = "deltanet"
    letter: ClassVar[str] = "D"
    role: ClassVar[str] = "mixer"
    uses_cpu_kernels: ClassVar[bool] = True
    supports_padding: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Options:
        conv_size: int = option(4, ge=1)                # short causal conv width on q, k, v
        chunk_size: int = option(64, ge=1)              # tokens per chunk of the chunked (training) form

    opts: Options
    readers: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj")
    writers: ClassVar[tuple[str, ...]] = ("o_proj",)

    def __init__(self, genome: Genome):
        super().__init__(genome)
        self.conv_size, self.chunk_size = self.opts.conv_size, self.opts.chunk_size
        self.n_heads, self.head_dim = genome.n_heads, genome.head_dim
        d, inner = genome.d_model, genome.n_heads * genome.head_dim
        self.q_proj = nn.Linear(d, inner, bias=False)
        self.k_proj = nn.Linear(d, inner, bias=False)
        self.v_proj = nn.Linear(d, inner, bias=False)
        self.b_proj = nn.Linear(d, self.n_heads, bias=False)
        # fla's separate q/k/v short convs, stored as one depthwise conv over the q|k|v channels: one kernel, and
        # nothing to concatenate per call (an fla checkpoint's q/k/v_conv1d weights concatenate into it).
        self.qkv_conv1d = ShortConv(3 * inner, self.conv_size, bias=False)
        self.o_norm = RMSNorm(self.head_dim)
        self.o_proj = nn.Linear(inner, d, bias=False)
        # The CUDA fast path is resolved once here; forward/prefill use it for CUDA bf16/fp16 inputs (set False to
        # force the torch form).
        self.use_fast_path = cuda_kernel(*FLA_DELTA_RULE) is not None

    @property
    def fast_path(self) -> str | None:
        """The fused backend forward/prefill use on CUDA ("fla"), or None (torch form everywhere)."""
        return "fla" if self.use_fast_path else None

    def _qkvb(self, x: torch.Tensor, conv: torch.Tensor | None, mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, D] -> q, k, v [B, T, H, hd] (conv+SiLU, q/k L2-normed), beta [B, T, H], raw q|k|v [B, T, 3*H*hd].
        With mask [B, T]: k and beta are 0 at pads (the state passes them by)."""
        B, T, _ = x.shape
        q, k, v, b = fused_linear(x, self.q_proj, self.k_proj, self.v_proj, self.b_proj)
        qkv_raw = torch.cat([q, k, v], dim=-1)                                  # [B, T, 3*H*hd]
        qkv = self.qkv_conv1d.silu(qkv_raw, conv, kernel=self.cpu_kernels, mask=mask)
        q, k, v = qkv.view(B, T, 3, self.n_heads, self.head_dim).unbind(2)     # [B, T, H, hd] each
        k, beta = l2norm(k), torch.sigmoid(b)
        if mask is not None:
            k, beta = zero_pads(mask, k, beta)
        return l2norm(q), k, v, beta, qkv_raw

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
              S0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, T, H, d] inputs, beta [B, T, H] -> o [B, T, H, dv], final state [B, H, dk, dv] (>= fp32; None if S0
        is None on the fast path, which then skips writing it)."""
        fast = self.use_fast_path and on_cuda(q)
        if fast and q.dtype in FLA_DTYPES:
            self._ran("fla.chunk_delta_rule")
            fn = cuda_kernel(*FLA_DELTA_RULE)
            assert fn is not None
            # fla's layout is ours here ([B, T, H, d]); q, k are L2-normed above, so not again in the kernel; same
            # default scale dk**-0.5, passed explicitly. fla accumulates in fp32 whatever q/k/v are.
            o, S = fn(q, k, v, beta.to(q.dtype), scale=self.head_dim ** -0.5, initial_state=S0,
                      output_final_state=S0 is not None, use_qk_l2norm_in_kernel=False)
            return o, (None if S is None or S0 is None else S.to(S0.dtype))
        dtype = q.dtype
        acc = acc_dtype(q.dtype) if S0 is None else S0.dtype                   # recurrence in >= fp32
        q, k, v, beta = (z.to(acc) for z in (q, k, v, beta))
        if self.cpu_kernel_applies(q):
            self._ran("cpu_kernel.delta_rule")
            return cpu.delta_rule(q, k, v, beta, initial_state=S0, scale=self.head_dim ** -0.5)
        self._ran("torch.chunked" + (refused(dtype, FLA_DTYPES) if fast else ""))
        return delta_rule_chunked(q, k, v, beta, self.chunk_size, initial_state=S0)

    def _out(self, o: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        B, T = o.shape[:2]                                                     # [B, T, H, hd]
        o = self.o_norm(o.to(dtype))                                           # per-head RMSNorm
        return self.o_proj(o.reshape(B, T, self.n_heads * self.head_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v, beta, _ = self._qkvb(x, None, mask)
        o, _ = self._core(q, k, v, beta, None)
        return self._out(o, x.dtype)

    def init_state(self, batch: int, max_len: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> DeltaNetState:
        inner = self.n_heads * self.head_dim
        return DeltaNetState(
            conv=torch.zeros(batch, 3 * inner, self.conv_size - 1, device=device, dtype=dtype),
            S=torch.zeros(batch, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=acc_dtype(dtype)))

    def prefill(self, x: torch.Tensor, state: DeltaNetState, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, DeltaNetState]:
        q, k, v, beta, raw = self._qkvb(x, state.conv, mask)
        o, S = self._core(q, k, v, beta, state.S)
        assert S is not None
        return self._out(o, x.dtype), DeltaNetState(conv=self.qkv_conv1d.new_cache(raw, state.conv, mask), S=S)

    # Triton / CUDA kernels the fused step launches per call of each (the kernel census, experiments/kernel_census).
    step_kernels: ClassVar[dict[tuple[str, str], int]] = {FLA_DELTA_STEP: 1, CONV_UPDATE: 1}

    def step(self, x: torch.Tensor, state: DeltaNetState, mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, DeltaNetState]:
        """x [B, 1, D] -> y [B, 1, D]: conv-state shift, one delta-rule update (neither for a row fed a pad), both
        IN PLACE in `state` (which is returned) for inference: a CUDA graph of the step captures them. On CUDA:
        causal_conv1d's conv update and fla's fused recurrent delta rule."""
        B = x.shape[0]
        q, k, v, b = fused_linear(x[:, 0], self.q_proj, self.k_proj, self.v_proj, self.b_proj)
        real = None if mask is None else mask[:, -1]
        qkv, conv, conv_path = self.qkv_conv1d.step_silu(joined(q, k, v), state.conv, real)
        q, k, v = qkv.view(B, 3, self.n_heads, self.head_dim).unbind(1)         # [B, H, hd] each
        fn = step_kernel(*FLA_DELTA_STEP, qkv, mask) if self.use_fast_path else None
        if fn is not None:
            self._ran(f"fla.fused_recurrent_delta_rule+{conv_path}")
            o, S = fn(q[:, None], k[:, None], v[:, None], beta=torch.sigmoid(b)[:, None], scale=self.head_dim ** -0.5,
                      initial_state=state.S, output_final_state=True, use_qk_l2norm_in_kernel=True)
            return self._out(o, x.dtype), write_state(state, conv=conv, S=S)
        self._ran(f"torch.recurrent{step_refused(qkv)}+{conv_path}")
        acc = state.S.dtype
        o, S = delta_rule_step(l2norm(q).to(acc), l2norm(k).to(acc), v.to(acc), torch.sigmoid(b).to(acc), state.S)
        S = S if real is None else keep_pads(real, S, state.S)
        return self._out(o[:, None], x.dtype), write_state(state, conv=conv, S=S)

    @classmethod
    def decode_cost(cls, genome: Genome, context: int) -> DecodeCost:
        k = cls.options_of(genome).conv_size
        d, h, hd = genome.d_model, genome.n_heads, genome.head_dim
        inner = h * hd
        gemm = 4 * d * inner + d * h
        weights = gemm + 3 * inner * k + hd
        state = h * hd * hd + 3 * inner * (k - 1)
        flops = 2 * gemm + 2 * k * 3 * inner + 6 * h * hd * hd + 12 * inner  # S^T k, rank-1 update, S^T q; norms
        # Fused q|k|v|beta GEMM, conv update + SiLU, fused recurrent delta rule (l2norm, sigmoid inside),
        # output RMSNorm, o_proj.
        return layer_cost(d, weights, state, state, flops, launches=5)
