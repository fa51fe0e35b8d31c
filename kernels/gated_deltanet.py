"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024): the delta rule with a data-dependent scalar decay per head.

Per head, with state S [dk, dv], L2-normalized key k_t, query q_t, write strength beta_t in (0, 1) and
log-decay g_t <= 0 (alpha_t = exp(g_t)):
    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
        = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T
    o_t = S_t^T (scale * q_t)
Training uses the chunked WY / UT form with the decay folded in. Inside a chunk with entering state S_0 and
inclusive cumulative log-decay G_i = g_1 + ... + g_i, the corrected values u solve one unit lower-triangular
system whose off-diagonal entries carry exp(G_i - G_j) <= 1, so the whole chunk is a few batched matmuls and
only S is carried from chunk to chunk (a loop over chunks, never over tokens). Every exponent is a
difference G_i - G_j with j <= i, or G_i itself, so nothing can overflow however strong the decay.

Layer (as fla's GatedDeltaNet): q/k/v projections -> short causal conv + SiLU -> L2-norm(q, k);
beta = sigmoid(b_proj x); g = -exp(A_log) * softplus(a_proj x + dt_bias); output RMSNorm per head times
SiLU(g_proj x) (use_output_gate); o_proj. On CUDA, fla's chunk kernel replaces the torch core when it imports.
Padded batches (`mask`): g = 0, k = 0 and beta = 0 at a pad leave S unchanged (no decay, no write: what fla's
cu_seqlens achieve by skipping it), and the short conv runs over each row's real tokens only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flashsearch.genome import Genome
from flashsearch.operators import option, option_error

from . import cpu
from ._common import (CONV_UPDATE, RMSNorm, ShortConv, acc_dtype, fused_linear, joined, keep_pads, l2norm, layer_cost,
                      on_cuda, outside_autocast, pad_time, refused, step_kernel, step_refused, write_state, zero_pads)
from ._common import cuda_kernel as fla_kernel  # fla's Triton kernels (gla.py imports it from here)
from .base import DecodeCost, Operator
from .deltanet import delta_rule_step

# fla's chunk kernels (this one and chunk_gla, gla.py) and the dtypes we hand them: fla computes in fp32 whatever it
# gets, takes bf16/fp16 everywhere and fp32 from 0.4 on (0.3's chunk_gated_delta_rule asserts q is not fp32; the
# pin in pyproject.toml keeps such versions out); anything else (fp64 in tests) stays on the torch form.
FLA_GATED_DELTA_RULE = ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule")
FLA_CHUNK_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
# The decode step's kernel: one launch for all heads (q/k L2-norm inside), the state read and written once.
FLA_GATED_STEP = ("fla.ops.gated_delta_rule", "fused_recurrent_gated_delta_rule")


# ---- option helper shared with gla.py ----------------------------------------------------------------------
def ratio_dim(op: str, key: str, value: float, base: int, base_name: str) -> int:
    """int(value * base) for a (validated, positive) ratio option whose product with `base` is a whole number."""
    n = value * base
    if not math.isclose(n, round(n), rel_tol=0, abs_tol=1e-6):
        raise option_error(op, key, value, f"must make {key} * {base_name} (= {value} * {base}) a whole number")
    return int(round(n))


# ---- the gated delta-rule core ---------------------------------------------------------------------------------
@outside_autocast
def gated_delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                             chunk_size: int = 64, scale: float | None = None,
                             initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule. q, k [b, t, h, dk] (k L2-normalized by the caller); v [b, t, h, dv];
    g [b, t, h] log-decay (<= 0); beta [b, t, h]; scale defaults to dk**-0.5 (applied to q);
    initial_state [b, h, dk, dv] or None. Returns o [b, t, h, dv] and the final state [b, h, dk, dv].
    Same layout and maths as fla.ops.gated_delta_rule (chunk_gated_delta_rule, naive_recurrent_gated_delta_rule)."""
    b, t, h, dk = q.shape
    # Per-head matmuls below want heads before time: [b, h, t, d] inside (one copy each, not one per matmul),
    # [b, t, h, d] at the boundary.
    q, k, v, g, beta = (z.transpose(1, 2).contiguous() for z in (q, k, v, g, beta))
    dv = v.shape[-1]
    L = chunk_size
    q = q * (dk ** -0.5 if scale is None else scale)
    # Zero padding at the end is exact: g = 0 (no decay), k = 0 and beta = 0 leave S unchanged.
    q, k, v, g, beta = (pad_time(z, L, 2) for z in (q, k, v, g, beta))
    nc = q.shape[2] // L
    q, k, v = (z.view(b, h, nc, L, z.shape[-1]) for z in (q, k, v))          # [b, h, nc, L, d]
    # Inclusive log-decay in the chunk, in fp64: exponents are differences G_i - G_j of nearby tokens, small
    # while G itself grows with every token of strong decay; in fp32 each would lose |G| * 6e-8.
    G = g.view(b, h, nc, L).to(torch.float64).cumsum(-1)
    beta = beta.view(b, h, nc, L, 1)

    # decay[i, j] = exp(G_i - G_j) for j <= i, else 0. Mask before exp: G_i - G_j > 0 above the diagonal.
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, -math.inf).to(q.dtype).exp()  # [b,h,nc,L,L]
    gamma = G.to(q.dtype).exp()[..., None]                                     # [b, h, nc, L, 1], since chunk start

    # UT transform with decay: (I + strict_tril(diag(beta) K K^T * decay)) [W | U] = [diag(beta gamma) K | diag(beta) V]
    # gives the corrected values u_c = U_c - W_c S for the state S entering chunk c.
    kb = k * beta
    A = (kb @ k.transpose(-1, -2)) * decay                                     # diagonal ignored (unitriangular)
    WU = torch.linalg.solve_triangular(A, torch.cat([kb * gamma, v * beta], dim=-1), upper=False,
                                       unitriangular=True)
    W, U = WU.split([dk, dv], dim=-1)                                          # [b, h, nc, L, dk], [.., dv]
    qk = (q @ k.transpose(-1, -2)) * decay                                     # [b, h, nc, L, L] causal, decayed
    q_in = q * gamma                                                           # queries reading the entering S
    k_out = k * (G[..., -1:] - G).to(q.dtype).exp()[..., None]                 # keys decayed to the chunk end
    chunk_decay = G[..., -1].to(q.dtype).exp()[..., None, None]                # [b, h, nc, 1, 1]

    S = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(q.dtype)
    outs = []
    for q_c, k_c, W_c, U_c, qk_c, a_c in zip(*(z.unbind(2) for z in (q_in, k_out, W, U, qk, chunk_decay))):
        u = U_c - W_c @ S                                                      # [b, h, L, dv]
        outs.append(q_c @ S + qk_c @ u)                                        # [b, h, L, dv]
        S = a_c * S + k_c.transpose(-1, -2) @ u                                # [b, h, dk, dv]
    o = torch.stack(outs, dim=2).view(b, h, nc * L, dv)[:, :, :t]
    return o.transpose(1, 2), S                                                # [b, t, h, dv]


@outside_autocast
def gated_delta_rule_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                          state: torch.Tensor, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step on one time slice of the [b, t, h, d] layout: q, k [b, h, dk]; v [b, h, dv]; g, beta [b, h];
    state [b, h, dk, dv]. Returns o [b, h, dv] and the new state.

    The gated rule is the delta rule applied to the decayed state: S <- exp(g) S, then the rank-1 correction."""
    return delta_rule_step(q, k, v, beta, state * g.exp()[..., None, None], scale)


# ---- the layer -------------------------------------------------------------------------------------------------
@dataclass
class GatedDeltaNetState:
    """conv: last conv_size-1 inputs of the q|k|v convs, [B, 2*H*dk + H*dv, K-1]; S: [B, H, dk, dv] (>= fp32)."""

    conv: torch.Tensor
    S: torch.Tensor


class GatedDeltaNet(Operator):
    """Gated DeltaNet token mixer: n_heads x head_dim keys/queries, head_dim * expand_v values per head."""

    name: ClassVar[str] = "gated_deltanet"
    letter: ClassVar[str] = "GD"
    role: ClassVar[str] = "mixer"
    aliases: ClassVar[tuple[str, ...]] = ("gdn",)
    uses_cpu_kernels: ClassVar[bool] = True
    supports_padding: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Options:
        conv_size: int = option(4, ge=1)                # short causal conv width on q, k, v
        chunk_size: int = option(64, ge=1)              # tokens per chunk of the chunked (training) form
        expand_v: float = option(1.0, gt=0)             # value head dim = expand_v * head_dim (must be whole)
        use_output_gate: bool = True                    # SiLU(g_proj x) gate on the output

    opts: Options
    readers: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj")
    writers: ClassVar[tuple[str, ...]] = ("o_proj",)

    @classmethod
    def dims(cls, genome: Genome) -> dict[str, Any]:
        """Validated sizes and flags: n_heads, head_k_dim, head_v_dim, conv_size, chunk_size, use_output_gate."""
        opts = cls.options_of(genome)
        return {"n_heads": genome.n_heads, "head_k_dim": genome.head_dim,
                "head_v_dim": ratio_dim(cls.name, "expand_v", opts.expand_v, genome.head_dim, "head_dim"),
                "conv_size": opts.conv_size, "chunk_size": opts.chunk_size, "use_output_gate": opts.use_output_gate}

    def __init__(self, genome: Genome, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__(genome)
        m = self.dims(genome)
        self.n_heads, self.head_k_dim, self.head_v_dim = m["n_heads"], m["head_k_dim"], m["head_v_dim"]
        self.conv_size, self.chunk_size, self.use_output_gate = m["conv_size"], m["chunk_size"], m["use_output_gate"]
        d = genome.d_model
        self.key_dim, self.value_dim = self.n_heads * self.head_k_dim, self.n_heads * self.head_v_dim
        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.a_proj = nn.Linear(d, self.n_heads, bias=False)                  # -> decay rate
        self.b_proj = nn.Linear(d, self.n_heads, bias=False)                  # -> beta
        # Mamba2-style decay parameters: A in [1, 16] (fla draws (0, 16]; 1 keeps log finite), dt log-uniform.
        self.A_log = nn.Parameter(torch.empty(self.n_heads).uniform_(1, 16).log())
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))        # inverse softplus of dt
        # fla's separate q/k/v short convs, stored as one depthwise conv over the q|k|v channels: one kernel, and
        # nothing to concatenate per call (an fla checkpoint's q/k/v_conv1d weights concatenate into it).
        self.qkv_conv1d = ShortConv(2 * self.key_dim + self.value_dim, self.conv_size, bias=False)
        if self.use_output_gate:
            self.g_proj = nn.Linear(d, self.value_dim, bias=False)
        self.o_norm = RMSNorm(self.head_v_dim)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)
        # The CUDA fast path is resolved once here; forward uses it for CUDA inputs (set False to force torch).
        self.use_fast_path = fla_kernel(*FLA_GATED_DELTA_RULE) is not None

    def _linears(self) -> tuple[nn.Linear, ...]:
        gate = (self.g_proj,) if self.use_output_gate else ()
        return (self.q_proj, self.k_proj, self.v_proj, self.a_proj, self.b_proj) + gate

    def _gate(self, a: torch.Tensor) -> torch.Tensor:
        """Log-decay g = -exp(A_log) * softplus(a + dt_bias) in >= fp32; a [..., H]."""
        acc = acc_dtype(a.dtype)
        return -self.A_log.to(acc).exp() * F.softplus(a.to(acc) + self.dt_bias.to(acc))

    def _inputs(self, x: torch.Tensor, conv: torch.Tensor | None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
        """x [B, T, D] -> q, k [B, T, H, dk] (conv+SiLU, L2-normed), v [B, T, H, dv], g, beta [B, T, H],
        output gate [B, T, H, dv] or None, raw q|k|v [B, T, conv channels] (for the conv cache).
        With mask [B, T]: k, g and beta are 0 at pads (the state passes them by)."""
        B, T, _ = x.shape
        q, k, v, a, b, *z = fused_linear(x, *self._linears())
        raw = torch.cat([q, k, v], dim=-1)
        qkv = self.qkv_conv1d.silu(raw, conv, kernel=self.cpu_kernels, mask=mask)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = l2norm(q.view(B, T, self.n_heads, self.head_k_dim))
        k = l2norm(k.view(B, T, self.n_heads, self.head_k_dim))
        v = v.view(B, T, self.n_heads, self.head_v_dim)
        gate = z[0].view(B, T, self.n_heads, self.head_v_dim) if z else None
        g, beta = self._gate(a), torch.sigmoid(b)
        if mask is not None:
            k, g, beta = zero_pads(mask, k, g, beta)
        return q, k, v, g, beta, gate, raw

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
              S0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, T, H, d] inputs -> o [B, T, H, dv], final state [B, H, dk, dv] (>= fp32; None if S0 is None
        on the fast path, which then skips writing it)."""
        fast = self.use_fast_path and on_cuda(q)
        if fast and q.dtype in FLA_CHUNK_DTYPES:
            self._ran("fla.chunk_gated_delta_rule")
            fn = fla_kernel(*FLA_GATED_DELTA_RULE)
            assert fn is not None
            # Same [B, T, H, d] layout; fla accumulates in fp32 whatever q/k/v are.
            return fn(q, k, v, g.float(), beta.to(q.dtype), initial_state=S0, output_final_state=S0 is not None)
        dtype = q.dtype
        acc = acc_dtype(q.dtype) if S0 is None else S0.dtype                   # recurrence in >= fp32
        q, k, v, g, beta = (z.to(acc) for z in (q, k, v, g, beta))
        if self.cpu_kernel_applies(q):
            self._ran("cpu_kernel.delta_rule")
            return cpu.delta_rule(q, k, v, beta, g, initial_state=S0)
        self._ran("torch.chunked" + (refused(dtype, FLA_CHUNK_DTYPES) if fast else ""))
        return gated_delta_rule_chunked(q, k, v, g, beta, chunk_size=self.chunk_size, initial_state=S0)

    def _out(self, o: torch.Tensor, gate: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """o [B, T, H, dv] -> [B, T, D]: per-head RMSNorm, times SiLU(gate) (fla's norm-then-gate), o_proj."""
        B, T = o.shape[:2]
        o = self.o_norm(o.to(dtype))
        if gate is not None:
            o = o * F.silu(gate)
        return self.o_proj(o.reshape(B, T, self.value_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v, g, beta, gate, _ = self._inputs(x, None, mask)
        o, _ = self._core(q, k, v, g, beta, None)
        return self._out(o, gate, x.dtype)

    def init_state(self, batch: int, max_len: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> GatedDeltaNetState:
        return GatedDeltaNetState(
            conv=torch.zeros(batch, 2 * self.key_dim + self.value_dim, self.conv_size - 1, device=device, dtype=dtype),
            S=torch.zeros(batch, self.n_heads, self.head_k_dim, self.head_v_dim, device=device,
                          dtype=acc_dtype(dtype)))

    def prefill(self, x: torch.Tensor, state: GatedDeltaNetState, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, GatedDeltaNetState]:
        q, k, v, g, beta, gate, raw = self._inputs(x, state.conv, mask)
        o, S = self._core(q, k, v, g, beta, state.S)
        assert S is not None
        return (self._out(o, gate, x.dtype),
                GatedDeltaNetState(conv=self.qkv_conv1d.new_cache(raw, state.conv, mask), S=S.to(state.S.dtype)))

    # Triton / CUDA kernels the fused step launches per call of each (the kernel census, experiments/kernel_census).
    step_kernels: ClassVar[dict[tuple[str, str], int]] = {FLA_GATED_STEP: 1, CONV_UPDATE: 1}

    def step(self, x: torch.Tensor, state: GatedDeltaNetState, mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, GatedDeltaNetState]:
        """x [B, 1, D] -> y [B, 1, D]: conv-state shift, one decay + delta-rule update (neither for a row fed a
        pad), both IN PLACE in `state` (which is returned) for inference. On CUDA: causal_conv1d's conv update and
        fla's fused recurrent gated delta rule."""
        B = x.shape[0]
        q, k, v, a, b, *z = fused_linear(x[:, 0], *self._linears())
        real = None if mask is None else mask[:, -1]
        qkv, conv, conv_path = self.qkv_conv1d.step_silu(joined(q, k, v), state.conv, real)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q, k = (t.reshape(B, self.n_heads, self.head_k_dim) for t in (q, k))   # [B, H, dk]
        v = v.reshape(B, self.n_heads, self.head_v_dim)                        # [B, H, dv]
        gate = z[0].view(B, 1, self.n_heads, self.head_v_dim) if z else None
        fn = step_kernel(*FLA_GATED_STEP, qkv, mask) if self.use_fast_path else None
        if fn is not None:
            self._ran(f"fla.fused_recurrent_gated_delta_rule+{conv_path}")
            # Keywords: fla 0.6 put gk, gv between g and beta.
            o, S = fn(q[:, None], k[:, None], v[:, None], g=self._gate(a)[:, None], beta=torch.sigmoid(b)[:, None],
                      scale=self.head_k_dim ** -0.5, initial_state=state.S, output_final_state=True,
                      use_qk_l2norm_in_kernel=True)
            return self._out(o, gate, x.dtype), write_state(state, conv=conv, S=S)
        self._ran(f"torch.recurrent{step_refused(qkv)}+{conv_path}")
        acc = state.S.dtype
        o, S = gated_delta_rule_step(l2norm(q).to(acc), l2norm(k).to(acc), v.to(acc), self._gate(a).to(acc),
                                     torch.sigmoid(b).to(acc), state.S)
        S = S if real is None else keep_pads(real, S, state.S)
        return self._out(o[:, None], gate, x.dtype), write_state(state, conv=conv, S=S)

    @classmethod
    def decode_cost(cls, genome: Genome, context: int) -> DecodeCost:
        m = cls.dims(genome)
        d, h, dk, dv, kc = genome.d_model, m["n_heads"], m["head_k_dim"], m["head_v_dim"], m["conv_size"]
        key, val = h * dk, h * dv
        conv = 2 * key + val
        gemm = d * (conv + 2 * h) + (d * val if m["use_output_gate"] else 0) + val * d
        weights = gemm + conv * kc + 2 * h + dv                     # + conv weights, A_log/dt_bias, norm gain
        state = h * dk * dv + conv * (kc - 1)                      # recurrent state + conv window, read and rewritten
        # decay S, S^T k, rank-1 update, S^T q; conv; l2norms, gate/sigmoid, gated RMSNorm.
        flops = 2 * gemm + 2 * kc * conv + 7 * h * dk * dv + 6 * key + 8 * val + 10 * h
        # Fused q|k|v|a|b|g GEMM, conv update + SiLU, fused recurrent gated delta rule (gate, l2norm, sigmoid
        # inside), gated RMSNorm, o_proj.
        return layer_cost(d, weights, state, state, flops, launches=5)
