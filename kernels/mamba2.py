"""Mamba2: selective state space model computed in its chunked state-space-duality (SSD) form.

Per head h (scalar decay A_h < 0) and time t, with B_t, C_t shared by the heads of a group:
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T          h: [P, N]  (head_dim x d_state)
    y_t = h_t C_t + D x_t
Training uses the chunked form: inside a chunk of L tokens the recurrence is a masked "attention" matrix
(C B^T weighted by decays), across chunks only the [P, N] states are carried. Decoding uses the recurrence.
Parameter layout follows mamba_ssm's Mamba2 (in_proj -> [z, x, B, C, dt], conv1d over [x, B, C] with bias,
dt_bias, A_log, D, gated RMSNorm `norm`, out_proj), so parameter counts and checkpoints line up.
On CUDA, forward/prefill use mamba_ssm's Triton SSD kernel (mamba_chunk_scan_combined) for the scan and Tri Dao's
causal_conv1d for the short conv when they import (`Mamba2.fast_path` names what is active); else the torch form.
Padded batches (`mask`): dt = 0 at a pad (no decay, no input: the SSM state passes through, as with mamba_ssm's
seq_idx / cu_seqlens), and the conv runs over each row's real tokens only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flashsearch.genome import Genome
from flashsearch.operators import option, option_error

from . import cpu
from ._common import (CONV_UPDATE, GatedRMSNorm, ShortConv, acc_dtype, cuda_kernel, derived, keep_pads, layer_cost,
                      on_cuda, outside_autocast, over_real_tokens, pad_time, refused, step_kernel, step_refused,
                      write_state, zero_pads)
from .base import DecodeCost, Operator, ProxyScale


# The fused CUDA kernels (optional: pip install flashsearch[gpu]).
SSD_KERNEL = ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")
CONV_KERNEL = ("causal_conv1d", "causal_conv1d_fn")
CONV_KERNEL_WIDTHS = (2, 3, 4)                                               # what causal_conv1d_fn implements
# What mamba_chunk_scan_combined computes in (fp32 accumulation inside); fp64 (tests) stays on the torch form.
SSD_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
# The decode step's kernel (mamba_ssm's Mamba2.step): softplus(dt + dt_bias), the decay, the state update in place,
# y = C h + D x, one launch for all heads.
STATE_UPDATE = ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update")


# ---- the SSD core ------------------------------------------------------------------------------------------
@outside_autocast
def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int, initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan (no D skip). Computes in the inputs' dtype; pass fp32 for accuracy.

    x [b, t, h, p]; dt [b, t, h] (positive, after softplus); A [h] (negative); B, C [b, t, g, n] with g | h
    (head i uses group i // (h/g), as in mamba_ssm); initial_state [b, h, p, n] or None.
    Returns y [b, t, h, p] and the final state [b, h, p, n].
    """
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g                                                          # heads per group
    L = chunk_size
    # Zero padding at the end is exact: dt = 0 means no decay and no input, so the final state is unchanged.
    x, dt, B, C = (pad_time(z, L, 1) for z in (x, dt, B, C))
    nc = x.shape[1] // L

    # Matmuls that mix heads of one group run with the heads folded into the matrix dims ((r p) columns)
    # rather than as broadcast batch dims: broadcasting in matmul materializes copies on CPU.
    xd = (x * dt[..., None]).view(b, nc, L, g, r, p)                          # dt-scaled input
    xh = xd.permute(0, 3, 4, 1, 2, 5)                                        # [b, g, r, nc, L, p]
    a = (dt * A).view(b, nc, L, g, r).permute(0, 3, 4, 1, 2)                 # [b, g, r, nc, L] log-decay
    Bc = B.view(b, nc, L, g, n).permute(0, 3, 1, 2, 4)                       # [b, g, nc, L, n]
    Cc = C.view(b, nc, L, g, n).permute(0, 3, 1, 2, 4)                       # [b, g, nc, L, n]
    a_cum = a.cumsum(-1)                                                     # [b, g, r, nc, L]

    # 1) intra-chunk: y_l = sum_{s<=l} (C_l . B_s) exp(a_cum_l - a_cum_s) xd_s
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    seg = (a_cum[..., :, None] - a_cum[..., None, :]).masked_fill(~causal, -math.inf)
    scores = (Cc @ Bc.transpose(-1, -2)).unsqueeze(2) * seg.exp()            # [b, g, r, nc, L, L]
    y = scores @ xh                                                          # [b, g, r, nc, L, p]

    # 2) state each chunk adds, decayed to the chunk's end: sum_s exp(a_cum_end - a_cum_s) xd_s B_s^T
    to_end = (a_cum[..., -1:] - a_cum).exp()                                 # [b, g, r, nc, L]
    xe = (xh * to_end[..., None]).permute(0, 1, 3, 4, 2, 5).reshape(b, g, nc, L, r * p)
    states = xe.transpose(-1, -2) @ Bc                                       # [b, g, nc, r*p, n]
    states = states.view(b, g, nc, r, p * n).transpose(2, 3)                 # [b, g, r, nc, p*n]

    # 3) carry states across chunks: a tiny (nc+1)x(nc+1) decay matrix instead of a sequential loop.
    if initial_state is None:
        init = states.new_zeros(b, g, r, 1, p * n)
    else:
        init = initial_state.to(states.dtype).reshape(b, g, r, 1, p * n)
    states = torch.cat([init, states], dim=3)                                # [b, g, r, nc+1, p*n]
    chunk_cum = F.pad(a_cum[..., -1], (1, 0)).cumsum(-1)                      # [b, g, r, nc+1]
    causal_c = torch.ones(nc + 1, nc + 1, dtype=torch.bool, device=x.device).tril()
    carry = (chunk_cum[..., :, None] - chunk_cum[..., None, :]).masked_fill(~causal_c, -math.inf).exp()
    states = carry @ states                                                  # state at each chunk boundary
    final_state = states[..., -1, :].reshape(b, h, p, n)
    start = states[..., :-1, :].view(b, g, r, nc, p, n).permute(0, 1, 3, 5, 2, 4).reshape(b, g, nc, n, r * p)

    # 4) contribution of the state entering each chunk: exp(a_cum_l) C_l h_start
    y_off = (Cc @ start).view(b, g, nc, L, r, p) * a_cum.permute(0, 1, 3, 4, 2).exp()[..., None]
    y = y.permute(0, 1, 3, 4, 2, 5) + y_off                                  # [b, g, nc, L, r, p]
    y = y.permute(0, 2, 3, 1, 4, 5).reshape(b, nc * L, h, p)[:, :t]
    return y, final_state


@outside_autocast
def ssd_step(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step (no D skip) on one time slice of the [b, t, h, p] layout: x [b, h, p]; dt [b, h]; A [h];
    B, C [b, g, n]; state [b, h, p, n]. Returns y [b, h, p] and the new state."""
    r = x.shape[1] // B.shape[1]
    Bh = B.repeat_interleave(r, dim=1)                                       # [b, h, n]
    Ch = C.repeat_interleave(r, dim=1)
    decay = (dt * A).exp()[..., None, None]                                  # [b, h, 1, 1]
    state = state * decay + (x * dt[..., None])[..., None] * Bh[:, :, None, :]
    y = (state @ Ch[..., None]).squeeze(-1)                                  # [b, h, p]
    return y, state


# ---- the layer -------------------------------------------------------------------------------------------------
@dataclass
class Mamba2State:
    """conv: last d_conv-1 inputs of the conv, [B, d_inner + 2*G*N, d_conv-1]; ssm: [B, H, P, N] (>= fp32)."""

    conv: torch.Tensor
    ssm: torch.Tensor


class Mamba2(Operator):
    """Mamba2 block (without its own norm/residual, which the model adds)."""

    name: ClassVar[str] = "mamba2"
    letter: ClassVar[str] = "M2"
    role: ClassVar[str] = "mixer"
    uses_cpu_kernels: ClassVar[bool] = True
    supports_padding: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Options:
        d_state: int = option(128, ge=1)                # SSM state size N per group
        expand: float = option(2.0, gt=0)               # d_inner = expand * d_model (must be whole)
        head_dim: int = option(64, ge=1)                # P; heads = d_inner / head_dim
        n_groups: int = option(1, ge=1)                 # B/C groups; must divide the heads
        d_conv: int = option(4, ge=1)                   # short causal conv width
        chunk_size: int = option(64, ge=1)              # tokens per chunk of the chunked (training) form

    opts: Options
    readers: ClassVar[tuple[str, ...]] = ("in_proj",)
    writers: ClassVar[tuple[str, ...]] = ("out_proj",)

    @classmethod
    def proxy_options(cls, options: Options, scale: ProxyScale) -> dict[str, int]:
        """A proxy takes the quality proxy's state size and head size: the full model's would outweigh the
        proxy's narrow width."""
        return {"d_state": scale.state_size, "head_dim": scale.state_head_dim}

    @classmethod
    def dims(cls, genome: Genome) -> dict[str, int]:
        """Validated sizes: d_inner, n_heads, head_dim, d_state, n_groups, d_conv, chunk_size, conv_dim."""
        opts, op = cls.options_of(genome), cls.name
        d_state, head_dim, n_groups = opts.d_state, opts.head_dim, opts.n_groups
        d_conv, chunk_size, expand = opts.d_conv, opts.chunk_size, opts.expand
        if float(expand * genome.d_model) != int(expand * genome.d_model):
            raise option_error(op, "expand", expand, f"must be a positive number with expand * d_model "
                                                     f"(d_model={genome.d_model}) an integer")
        d_inner = int(expand * genome.d_model)
        if d_inner % head_dim:
            hint = max(h for h in range(1, head_dim) if d_inner % h == 0)
            raise option_error(op, "head_dim", head_dim, f"must divide d_inner = expand * d_model = {d_inner}; "
                                                         f"e.g. head_dim={hint}")
        n_heads = d_inner // head_dim
        if n_heads % n_groups:
            raise option_error(op, "n_groups", n_groups, f"must divide the number of heads d_inner / head_dim "
                                                         f"= {n_heads}; e.g. n_groups=1")
        return {"d_inner": d_inner, "n_heads": n_heads, "head_dim": head_dim, "d_state": d_state,
                "n_groups": n_groups, "d_conv": d_conv, "chunk_size": chunk_size,
                "conv_dim": d_inner + 2 * n_groups * d_state}

    def __init__(self, genome: Genome, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__(genome)
        dims = self.dims(genome)
        self.d_inner, self.n_heads, self.head_dim = dims["d_inner"], dims["n_heads"], dims["head_dim"]
        self.d_state, self.n_groups, self.chunk_size = dims["d_state"], dims["n_groups"], dims["chunk_size"]
        self.conv_dim = dims["conv_dim"]
        d = genome.d_model
        self.in_proj = nn.Linear(d, self.d_inner + self.conv_dim + self.n_heads, bias=False)  # -> z, xBC, dt
        self.conv1d = ShortConv(self.conv_dim, dims["d_conv"], bias=True)
        # mamba_ssm's init: dt log-uniform in [dt_min, dt_max], stored as its inverse softplus; A in [1, 16].
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.empty(self.n_heads).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // self.n_groups)
        self.out_proj = nn.Linear(self.d_inner, d, bias=False)
        # The CUDA fast path is resolved once here: "mamba_ssm" (SSD scan), "causal_conv1d" (short conv), both
        # joined by "+", or None. forward/prefill use the named kernels for CUDA inputs; set None to force torch.
        backends = []
        if cuda_kernel(*SSD_KERNEL) is not None:
            backends.append("mamba_ssm")
        if dims["d_conv"] in CONV_KERNEL_WIDTHS and cuda_kernel(*CONV_KERNEL) is not None:
            backends.append("causal_conv1d")
        self.fast_path: str | None = "+".join(backends) or None

    def _uses(self, backend: str, x: torch.Tensor) -> bool:
        return self.fast_path is not None and backend in self.fast_path.split("+") and on_cuda(x)

    def _ssd_fast(self, xs: torch.Tensor) -> bool:
        """Whether the SSD scan runs mamba_ssm's kernel on xs; records the torch path (and a refused dtype) if not."""
        fast = self._uses("mamba_ssm", xs)
        if fast and xs.dtype in SSD_DTYPES:
            self._ran("mamba_ssm.chunk_scan")
            return True
        self._ran("torch.chunked" + (refused(xs.dtype, SSD_DTYPES) if fast else ""))   # _scan_dt: or the CPU kernel
        return False

    def _conv(self, xBC: torch.Tensor, cache: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """SiLU(causal depthwise conv) of xBC [B, T, C] after the inputs in cache [B, C, K-1] (zeros if None); with
        mask [B, T], over each row's real tokens only."""
        if mask is not None:
            return over_real_tokens(lambda xr: self._conv(xr, cache), xBC, mask)
        if not self._uses("causal_conv1d", xBC):
            return self.conv1d.silu(xBC, cache, kernel=self.cpu_kernels)
        fn = cuda_kernel(*CONV_KERNEL)
        assert fn is not None
        # causal_conv1d_fn: x [B, C, T], weight [C, K], bias [C], zero left padding, SiLU fused. A cache is
        # prepended to the sequence and its K-1 outputs dropped (exact: each output sees K inputs), which keeps
        # x contiguous channels-first (its initial_states argument needs channels-last strides that are multiples
        # of 8).
        xt = xBC.transpose(1, 2)
        k1 = self.conv1d.kernel_size - 1
        if cache is not None:
            xt = torch.cat([cache.to(xt.dtype), xt], dim=-1)
        y = fn(xt.contiguous(), self.conv1d.weight.view(self.conv_dim, k1 + 1), self.conv1d.bias, activation="silu")
        return (y if cache is None else y[..., k1:]).transpose(1, 2)

    def _scan(self, xs: torch.Tensor, dt: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
              S0: torch.Tensor | None, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SSD scan with the D skip. xs [B, T, H, P]; dt [B, T, H] before softplus and dt_bias; Bm, Cm [B, T, G, N];
        S0 [B, H, P, N] or None; mask [B, T] or None. Returns y [B, T, H, P] (xs's dtype) and the final state
        (None if S0 is None)."""
        if mask is not None:
            # dt = 0 at pads, after the softplus: the kernels then get dt as is (no bias, no softplus of theirs).
            acc = acc_dtype(xs.dtype)
            dt_real = zero_pads(mask, F.softplus(dt.to(acc) + self.dt_bias.to(acc)))[0]
            return self._scan_dt(xs, dt_real, Bm, Cm, S0)
        if self._ssd_fast(xs):
            fn = cuda_kernel(*SSD_KERNEL)
            assert fn is not None
            # Same [b, l, h, p] / [b, l, g, n] layout; softplus(dt + dt_bias) and the D skip happen in the kernel;
            # z=None because the gate is applied by the grouped RMSNorm afterwards (as mamba_ssm's Mamba2 does).
            A = -self.A_log.to(acc_dtype(self.A_log.dtype)).exp()                # [H], >= fp32 as the kernel wants
            out = fn(xs, dt, A, Bm, Cm, self.chunk_size, D=self.D, z=None, dt_bias=self.dt_bias,
                     initial_states=S0, dt_softplus=True, return_final_states=S0 is not None)
            if S0 is None:
                return out, None
            y, final = out
            return y, final.to(S0.dtype)
        acc = acc_dtype(xs.dtype)                                               # scan in >= fp32
        return self._scan_dt(xs, F.softplus(dt.to(acc) + self.dt_bias.to(acc)), Bm, Cm, S0, checked=True)

    def _scan_dt(self, xs: torch.Tensor, dt: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
                 S0: torch.Tensor | None, checked: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scan given the final dt [B, T, H] (>= fp32: after dt_bias and softplus). checked: the caller found
        the kernel does not apply (and recorded the path)."""
        if not checked and self._ssd_fast(xs):
            fn = cuda_kernel(*SSD_KERNEL)
            assert fn is not None
            A = -self.A_log.to(dt.dtype).exp()
            out = fn(xs, dt, A, Bm, Cm, self.chunk_size, D=self.D, z=None, dt_bias=None, initial_states=S0,
                     dt_softplus=False, return_final_states=S0 is not None)
            if S0 is None:
                return out, None
            y, final = out
            return y, final.to(S0.dtype)
        acc = dt.dtype
        A = -self.A_log.to(acc).exp()                                           # [H]
        x32 = xs.to(acc)
        if self.cpu_kernel_applies(x32):
            self._ran("cpu_kernel.ssd")
            y, final = cpu.ssd(x32, dt, A, Bm.to(acc), Cm.to(acc), S0)
        else:
            y, final = ssd_chunked(x32, dt, A, Bm.to(acc), Cm.to(acc), self.chunk_size, S0)
        return (y + x32 * self.D.to(acc)[:, None]).to(xs.dtype), final

    def _mix(self, x: torch.Tensor, state: Mamba2State | None, mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, Mamba2State | None]:
        """Chunked forward from an optional state; returns the output and (if a state was given) the new state."""
        Bsz, T, _ = x.shape
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC_act = self._conv(xBC, None if state is None else state.conv, mask)  # [B, T, conv_dim]
        conv_path = "causal_conv1d" if mask is None and self._uses("causal_conv1d", xBC) else "torch.conv"
        xs, Bm, Cm = xBC_act.split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], -1)
        y, final = self._scan(xs.view(Bsz, T, self.n_heads, self.head_dim),   # [B, T, H, P]
                              dt, Bm.view(Bsz, T, self.n_groups, self.d_state),
                              Cm.view(Bsz, T, self.n_groups, self.d_state), None if state is None else state.ssm,
                              mask)
        self._ran(f"{self.last_path}+{conv_path}")                             # the scan's path, then the conv's
        out = self.out_proj(self.norm(y.to(x.dtype).reshape(Bsz, T, self.d_inner), z))
        if state is None:
            return out, None
        return out, Mamba2State(conv=self.conv1d.new_cache(xBC, state.conv, mask), ssm=final)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._mix(x, None, mask)[0]

    def init_state(self, batch: int, max_len: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Mamba2State:
        k1 = self.conv1d.kernel_size - 1
        return Mamba2State(conv=torch.zeros(batch, self.conv_dim, k1, device=device, dtype=dtype),
                           ssm=torch.zeros(batch, self.n_heads, self.head_dim, self.d_state, device=device,
                                           dtype=acc_dtype(dtype)))

    def prefill(self, x: torch.Tensor, state: Mamba2State, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, Mamba2State]:
        y, new = self._mix(x, state, mask)
        assert new is not None
        return y, new

    # Triton / CUDA kernels the fused step launches per call of each (the kernel census, experiments/kernel_census).
    step_kernels: ClassVar[dict[tuple[str, str], int]] = {STATE_UPDATE: 1, CONV_UPDATE: 1}

    def step(self, x: torch.Tensor, state: Mamba2State, mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, Mamba2State]:
        """x [B, 1, D] -> y [B, 1, D]: conv-state shift, one SSM recurrence step (none for a row fed a pad), both
        IN PLACE in `state` (which is returned) for inference. On CUDA: causal_conv1d's conv update (else the
        torch one) and mamba_ssm's selective_state_update."""
        Bsz = x.shape[0]
        z, xBC, dt = self.in_proj(x[:, 0]).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        real = None if mask is None else mask[:, -1]
        xBC, conv, conv_path = self.conv1d.step_silu(xBC, state.conv, real)
        xs, Bm, Cm = xBC.split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], -1)
        Bm, Cm = (t.reshape(Bsz, self.n_groups, self.d_state) for t in (Bm, Cm))
        xs = xs.reshape(Bsz, self.n_heads, self.head_dim)                      # [B, H, P]
        fn = step_kernel(*STATE_UPDATE, xs, mask) if self.fast_path is not None and "mamba_ssm" in self.fast_path \
            else None
        if fn is not None:
            self._ran(f"mamba_ssm.selective_state_update+{conv_path}")
            H, P, N = self.n_heads, self.head_dim, self.d_state
            # Per-head values broadcast over P (and N) by stride-0 views: the kernel's tied-head form.
            A = derived(self, "_A", (self.A_log,), lambda: -self.A_log.float().exp())[:, None, None].expand(H, P, N)
            y = fn(state.ssm, xs, dt[:, :, None].expand(Bsz, H, P), A, Bm, Cm, D=self.D[:, None].expand(H, P),
                   z=None, dt_bias=self.dt_bias[:, None].expand(H, P), dt_softplus=True)   # state.ssm in place
            ssm = state.ssm
        else:
            self._ran(f"torch.recurrent{step_refused(xs)}+{conv_path}")
            acc = state.ssm.dtype
            xs = xs.to(acc)
            dt = F.softplus(dt.to(acc) + self.dt_bias.to(acc))                  # [B, H]
            y, ssm = ssd_step(xs, dt, -self.A_log.to(acc).exp(), Bm.to(acc), Cm.to(acc), state.ssm)
            y = y + xs * self.D.to(acc)[:, None]
            ssm = ssm if real is None else keep_pads(real, ssm, state.ssm)
        out = self.out_proj(self.norm(y.to(x.dtype).reshape(Bsz, 1, self.d_inner), z[:, None]))
        return out, write_state(state, conv=conv, ssm=ssm)

    @classmethod
    def decode_cost(cls, genome: Genome, context: int) -> DecodeCost:
        m = cls.dims(genome)
        d, di, h, p, n, k = genome.d_model, m["d_inner"], m["n_heads"], m["head_dim"], m["d_state"], m["d_conv"]
        cd = m["conv_dim"]
        gemm = d * (di + cd + h) + di * d
        weights = gemm + cd * (k + 1) + 3 * h + di                  # + conv weight/bias, A_log/D/dt_bias, norm
        state = cd * (k - 1) + h * p * n                           # conv window + SSM state, read and rewritten
        flops = 2 * gemm + 2 * k * cd + 5 * h * p * n + 8 * di     # decay*h + dt*x*B, h.C; gate + norm
        # in_proj GEMM, causal_conv1d_update, selective_state_update (softplus, D skip fused), gated norm, out_proj.
        return layer_cost(d, weights, state, state, flops, launches=5)
