"""Gated Linear Attention (Yang, Wang, Shen, Panda, Kim 2023): linear attention with a data-dependent decay per
key channel.

Per head, with state S [dk, dv] and log-decay vector gk_t <= 0 (alpha_t = exp(gk_t) per key channel):
    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T
    o_t = S_t^T (scale * q_t)
Chunked form: with G_i = gk_1 + ... + gk_i (inclusive, per channel) inside a chunk entering with state S_0,
    o_i = (q_i * e^{G_i})^T S_0 + sum_{j<=i} [sum_c q_ic k_jc e^{G_ic - G_jc}] v_j
    S_L = diag(e^{G_L}) S_0 + sum_j (k_j * e^{G_L - G_j}) v_j^T.
The intra-chunk scores cannot be factored as (q e^G)(k e^{-G})^T: e^{-G} overflows under strong decay. They
are built by halving instead (in the spirit of fla's secondary chunking): the second half of every block
against its first half is one matmul with both sides taken relative to the boundary between them (both
exponents <= 0), recursing down to single tokens (or to odd-sized blocks, done elementwise). Every
exponent is <= 0, so long sequences and strong decays underflow to 0 instead of overflowing. Only the state
recurrence loops over chunks.

Layer (as fla's GatedLinearAttention): q, k (key dim = expand_k * d_model), v (expand_v * d_model), optional
short conv + SiLU (off by default, as in fla); gk = logsigmoid(low-rank gk_proj x) / gate_logit_normalizer;
output RMSNorm per head times SiLU(g_proj x) (use_output_gate); o_proj. On CUDA, fla's chunk_gla replaces
the torch core when it imports.
Padded batches (`mask`): gk = 0 and k = 0 at a pad leave S unchanged (no decay, no write: what fla's cu_seqlens
achieve by skipping it), and the optional short conv runs over each row's real tokens only.
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

from ._common import (CONV_UPDATE, RMSNorm, ShortConv, acc_dtype, fused_linear, joined, keep_pads, layer_cost, on_cuda,
                      outside_autocast, pad_time, refused, step_kernel, step_refused, write_state, zero_pads)
from .base import DecodeCost, Operator
from .gated_deltanet import FLA_CHUNK_DTYPES, fla_kernel, ratio_dim

FLA_GLA = ("fla.ops.gla", "chunk_gla")
FLA_GLA_STEP = ("fla.ops.gla", "fused_recurrent_gla")         # the decode step's kernel: one launch for all heads


# ---- the GLA core ------------------------------------------------------------------------------------------------
# Every exponent below is a sum of log-decays over a run of tokens (a prefix or suffix of a block), taken directly
# from gk by a cumsum, never a difference G_i - G_j of two long running sums: so it is as precise in fp32 as gk
# itself (a difference of sums would lose |G| * 6e-8 under strong decay) and always <= 0.
def _suffix_sums(g: torch.Tensor) -> torch.Tensor:
    """Exclusive suffix sums over dim -2: out_j = sum_{t > j} g_t (0 for the last row). g [..., m, dk]."""
    return F.pad(g[..., 1:, :], (0, 0, 0, 1)).flip(-2).cumsum(-2).flip(-2)


def _intra_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: torch.Tensor) -> torch.Tensor:
    """o_i = sum_{j<=i in the chunk} [sum_c q_ic k_jc e^{G_ic - G_jc}] v_j, computed stably.
    q, k, gk [..., L, dk] (gk = per-token log-decay, G its inclusive cumsum); v [..., L, dv].

    Halving: split every block of even size m into halves; the second half's queries against the first half's keys
    is one matmul with both sides taken relative to the boundary between them (q_i e^{sum of gk after the
    boundary up to i}, k_j e^{sum of gk after j up to the boundary}: both exponents <= 0). Then recurse into both
    halves, all blocks of a level at once. Blocks of odd size m0 (1 when L is a power of two) are finished
    elementwise.
    """
    *lead, L, dk = q.shape
    dv = v.shape[-1]
    o = None
    m = L
    while m % 2 == 0:
        half, nb = m // 2, L // m
        # unbind, not [..., i, :, :]: its backward is one stack instead of a zero-filled tensor per index.
        q0, q1 = q.view(*lead, nb, 2, half, dk).unbind(-3)                     # [.., nb, half, dk] each
        k0, _ = k.view(*lead, nb, 2, half, dk).unbind(-3)
        g0, g1 = gk.view(*lead, nb, 2, half, dk).unbind(-3)
        v0 = v.view(*lead, nb, 2, half, dv).unbind(-3)[0]                      # [.., nb, half, dv]
        q_rel = q1 * g1.cumsum(-2).exp()                                       # decay from the boundary to i
        k_rel = k0 * _suffix_sums(g0).exp()                                    # decay from j to the boundary
        cross = (q_rel @ k_rel.transpose(-1, -2)) @ v0                          # [.., nb, half, dv]
        level = F.pad(cross, (0, 0, half, 0)).view(*lead, L, dv)                # lands on the second halves only
        o = level if o is None else o + level
        m = half
    if m == 1:
        diag = (q * k).sum(-1, keepdim=True) * v                                # e^0 = 1 on the diagonal
    else:
        # Diagonal blocks of odd size m: materialize e^{G_i - G_j} (j <= i) from block-local cumsums (short runs
        # of m tokens), masked before exp. (Stopping the halving early at a larger even m measured slower on CPU:
        # the [m, m, dk] elementwise product costs more than the last levels' small matmuls.)
        nb = L // m
        qb, kb = (z.view(*lead, nb, m, dk) for z in (q, k))                    # [.., nb, m, dk]
        Gb = gk.view(*lead, nb, m, dk).cumsum(-2)
        causal = torch.ones(m, m, dtype=torch.bool, device=q.device).tril()[:, :, None]
        decay = (Gb[..., :, None, :] - Gb[..., None, :, :]).masked_fill(~causal, -math.inf).exp()  # [.., nb, m, m, dk]
        scores = (qb[..., :, None, :] * kb[..., None, :, :] * decay).sum(-1)  # [.., nb, m, m]
        diag = (scores @ v.view(*lead, nb, m, dv)).view(*lead, L, dv)
    return diag if o is None else o + diag


@outside_autocast
def gla_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: torch.Tensor, chunk_size: int = 64,
                scale: float | None = None, initial_state: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked GLA. q, k, gk [b, t, h, dk] (gk = log-decay <= 0); v [b, t, h, dv]; scale defaults to dk**-0.5
    (applied to q); initial_state [b, h, dk, dv] or None. Returns o [b, t, h, dv] and the final state
    [b, h, dk, dv]. Same layout and maths as fla.ops.gla (chunk_gla, naive_recurrent_gla). Computes in the
    inputs' dtype."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    L = chunk_size
    q = q * (dk ** -0.5 if scale is None else scale)
    # Zero padding at the end is exact: gk = 0 (no decay) and k = 0 leave S unchanged.
    q, k, v, gk = (pad_time(z, L, 1) for z in (q, k, v, gk))
    nc = q.shape[1] // L
    # Per-head matmuls want heads before time: [b, t, h, d] -> [b, h, nc, L, d] inside.
    # One copy each here rather than one inside every matmul below.
    q, k, v, gk = (z.view(b, nc, L, h, z.shape[-1]).permute(0, 3, 1, 2, 4).contiguous() for z in (q, k, v, gk))

    o = _intra_chunk(q, k, v, gk)                                              # [b, h, nc, L, dv]

    # -- inter-chunk: only the state recurrence is sequential ----------------------------------------------------
    G = gk.cumsum(-2)                                                          # decay since the chunk start
    q_in = q * G.exp()                                                         # queries reading the entering S
    kv = (k * _suffix_sums(gk).exp()).transpose(-1, -2) @ v                    # [b, h, nc, dk, dv] chunk's writes
    chunk_decay = G[..., -1, :].exp()[..., None]                               # [b, h, nc, dk, 1]
    S = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(q.dtype)
    entering = []
    for kv_c, a_c in zip(kv.unbind(2), chunk_decay.unbind(2)):
        entering.append(S)
        S = a_c * S + kv_c
    o = o + q_in @ torch.stack(entering, dim=2)                                # [b, h, nc, L, dv]
    o = o.permute(0, 2, 3, 1, 4).reshape(b, nc * L, h, dv)[:, :t]              # [b, t, h, dv]
    return o, S


@outside_autocast
def gla_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: torch.Tensor, state: torch.Tensor,
             scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step on one time slice of the [b, t, h, d] layout: q, k, gk [b, h, dk]; v [b, h, dv];
    state [b, h, dk, dv]. Returns o [b, h, dv] and the new state."""
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    state = state * gk.exp()[..., None] + k[..., :, None] * v[..., None, :]   # decay per key channel + write
    o = (q.unsqueeze(-2) @ state).squeeze(-2)                                  # [b, h, dv]
    return o, state


# ---- the layer -------------------------------------------------------------------------------------------------
@dataclass
class GLAState:
    """conv: last conv_size-1 inputs of the q|k|v convs, [B, 2*key_dim + value_dim, K-1] ([B, 0, K-1] without
    short conv); S: [B, H, dk, dv] (>= fp32)."""

    conv: torch.Tensor
    S: torch.Tensor


class GLA(Operator):
    """GLA token mixer: n_heads heads over key dim expand_k * d_model and value dim expand_v * d_model."""

    name: ClassVar[str] = "gla"
    letter: ClassVar[str] = "G"
    role: ClassVar[str] = "mixer"
    supports_padding: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Options:
        expand_k: float = option(0.5, gt=0)             # key dim = expand_k * d_model (whole, divisible by heads)
        expand_v: float = option(1.0, gt=0)             # value dim = expand_v * d_model (same)
        gate_low_rank_dim: int = option(16, ge=1)       # rank of the decay projection
        gate_logit_normalizer: float = option(16.0, gt=0)  # log-decay = logsigmoid(.) / this
        use_output_gate: bool = True                    # SiLU(g_proj x) gate on the output
        use_short_conv: bool = False                    # short causal conv + SiLU on q, k, v
        conv_size: int = option(4, ge=1)                # its width
        chunk_size: int = option(64, ge=1)              # tokens per chunk of the chunked (training) form

    opts: Options
    readers: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj")
    writers: ClassVar[tuple[str, ...]] = ("o_proj",)

    @classmethod
    def dims(cls, genome: Genome) -> dict[str, Any]:
        """Validated sizes and flags (key_dim, value_dim, head_k_dim, head_v_dim, ... and the options)."""
        opts = cls.options_of(genome)
        op, d, h = cls.name, genome.d_model, genome.n_heads
        m: dict[str, Any] = {"n_heads": h}
        for key, dim in (("expand_k", "key_dim"), ("expand_v", "value_dim")):
            ratio = getattr(opts, key)
            m[dim] = ratio_dim(op, key, ratio, d, "d_model")
            if m[dim] % h:
                raise option_error(op, key, ratio, f"gives {dim} = {key} * d_model = {m[dim]}, which n_heads={h} "
                                                       f"(genome.n_heads) does not divide")
        m["head_k_dim"], m["head_v_dim"] = m["key_dim"] // h, m["value_dim"] // h
        m["rank"], m["normalizer"] = opts.gate_low_rank_dim, opts.gate_logit_normalizer
        m["use_output_gate"], m["use_short_conv"] = opts.use_output_gate, opts.use_short_conv
        m["conv_size"], m["chunk_size"] = opts.conv_size, opts.chunk_size
        return m

    def __init__(self, genome: Genome):
        super().__init__(genome)
        m = self.dims(genome)
        self.n_heads, self.key_dim, self.value_dim = m["n_heads"], m["key_dim"], m["value_dim"]
        self.head_k_dim, self.head_v_dim = m["head_k_dim"], m["head_v_dim"]
        self.normalizer, self.chunk_size = m["normalizer"], m["chunk_size"]
        self.use_output_gate, self.use_short_conv = m["use_output_gate"], m["use_short_conv"]
        self.conv_size = m["conv_size"]
        d = genome.d_model
        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        if self.use_output_gate:
            self.g_proj = nn.Linear(d, self.value_dim, bias=False)
        if self.use_short_conv:
            # fla's separate q/k/v short convs as one depthwise conv over the q|k|v channels (one kernel, nothing
            # to concatenate per call; an fla checkpoint's q/k/v_conv1d weights concatenate into it).
            self.qkv_conv1d = ShortConv(self.conv_channels, self.conv_size, bias=False)
        # Low-rank decay projection, named as fla's (gk_proj.0, gk_proj.1) so checkpoints map 1:1. Zero bias:
        # the initial decay is about logsigmoid(0) / 16, a half-life of ~16 tokens.
        self.gk_proj = nn.Sequential(nn.Linear(d, m["rank"], bias=False), nn.Linear(m["rank"], self.key_dim, bias=True))
        nn.init.zeros_(self.gk_proj[1].bias)
        # fla's names: the fused norm+gate when gated, a plain RMSNorm otherwise.
        if self.use_output_gate:
            self.g_norm_swish_gate = RMSNorm(self.head_v_dim)
        else:
            self.g_norm = RMSNorm(self.head_v_dim)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)
        # The CUDA fast path is resolved once here; forward uses it for CUDA inputs (set False to force torch).
        self.use_fast_path = fla_kernel(*FLA_GLA) is not None

    @property
    def conv_channels(self) -> int:
        return 2 * self.key_dim + self.value_dim if self.use_short_conv else 0

    def _linears(self) -> tuple[nn.Linear, ...]:
        # gk_proj's first (down) projection rides along in the fused GEMM.
        gate = (self.g_proj,) if self.use_output_gate else ()
        return (self.q_proj, self.k_proj, self.v_proj, self.gk_proj[0]) + gate

    def _split(self, x: torch.Tensor, conv: torch.Tensor | None, step: bool,
               mask: torch.Tensor | None = None) -> tuple[Any, ...]:
        """x [..., D] -> q, k [..., key_dim], v [..., value_dim] (after the optional conv + SiLU), log-decay
        gk [..., key_dim] in >= fp32, output gate [..., value_dim] or None, raw q|k|v, and for a step the new
        conv cache and the conv's path (None without short conv). step=True: x is [B, D] and conv the cache to
        shift (in place without grad; not for rows whose mask [B, 1] is False); else x is [B, T, D]."""
        q, k, v, r, *z = fused_linear(x, *self._linears())
        raw, conv_path, new_conv = None, None, conv
        if self.use_short_conv:
            raw = joined(q, k, v) if step else torch.cat([q, k, v], dim=-1)
            if step:
                assert conv is not None
                qkv, new_conv, conv_path = self.qkv_conv1d.step_silu(raw, conv,
                                                                    None if mask is None else mask[:, -1])
            else:
                qkv = F.silu(self.qkv_conv1d(raw, conv, mask))
            q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        acc = acc_dtype(x.dtype)
        gk = F.logsigmoid(self.gk_proj[1](r).to(acc)) / self.normalizer
        if mask is not None and not step:                                       # pads: no decay, no write
            k, gk = zero_pads(mask, k, gk)
        return q, k, v, gk, (z[0] if z else None), raw, (new_conv, conv_path)

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: torch.Tensor,
              S0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, T, H, d] inputs -> o [B, T, H, dv], final state [B, H, dk, dv] (>= fp32; None if S0 is None on the
        fast path, which then skips writing it)."""
        fast = self.use_fast_path and on_cuda(q)
        if fast and q.dtype in FLA_CHUNK_DTYPES:
            self._ran("fla.chunk_gla")
            fn = fla_kernel(*FLA_GLA)
            assert fn is not None
            return fn(q, k, v, gk.float(), initial_state=S0, output_final_state=S0 is not None)
        self._ran("torch.chunked" + (refused(q.dtype, FLA_CHUNK_DTYPES) if fast else ""))
        acc = acc_dtype(q.dtype) if S0 is None else S0.dtype                    # recurrence in >= fp32
        return gla_chunked(*(z.to(acc) for z in (q, k, v, gk)), chunk_size=self.chunk_size, initial_state=S0)

    def _out(self, o: torch.Tensor, gate: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """o [B, T, H, dv] -> [B, T, D]: per-head RMSNorm, times SiLU(gate) (fla's norm-then-gate), o_proj."""
        B, T = o.shape[:2]
        if gate is not None:
            o = self.g_norm_swish_gate(o.to(dtype)) * F.silu(gate.view(B, T, self.n_heads, self.head_v_dim))
        else:
            o = self.g_norm(o.to(dtype))
        return self.o_proj(o.reshape(B, T, self.value_dim))

    def _heads(self, *zs: torch.Tensor) -> list[torch.Tensor]:
        """[B, T, H*d] -> [B, T, H, d] for each."""
        return [z.view(*z.shape[:2], self.n_heads, -1) for z in zs]

    def _mix(self, x: torch.Tensor, state: GLAState | None, mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, GLAState | None]:
        q, k, v, gk, gate, raw, _ = self._split(x, None if state is None else state.conv, step=False, mask=mask)
        o, S = self._core(*self._heads(q, k, v, gk), None if state is None else state.S)
        y = self._out(o, gate, x.dtype)
        if state is None:
            return y, None
        assert S is not None
        conv = self.qkv_conv1d.new_cache(raw, state.conv, mask) if raw is not None else state.conv
        return y, GLAState(conv=conv, S=S.to(state.S.dtype))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._mix(x, None, mask)[0]

    def init_state(self, batch: int, max_len: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> GLAState:
        return GLAState(
            conv=torch.zeros(batch, self.conv_channels, self.conv_size - 1, device=device, dtype=dtype),
            S=torch.zeros(batch, self.n_heads, self.head_k_dim, self.head_v_dim, device=device,
                          dtype=acc_dtype(dtype)))

    def prefill(self, x: torch.Tensor, state: GLAState, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, GLAState]:
        y, new = self._mix(x, state, mask)
        assert new is not None
        return y, new

    # Triton / CUDA kernels the fused step launches per call of each (the kernel census, experiments/kernel_census).
    step_kernels: ClassVar[dict[tuple[str, str], int]] = {FLA_GLA_STEP: 1, CONV_UPDATE: 1}

    def step(self, x: torch.Tensor, state: GLAState, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, GLAState]:
        """x [B, 1, D] -> y [B, 1, D]: (conv-state shift), one decay + rank-1 write (neither for a row fed a pad),
        both IN PLACE in `state` (which is returned) for inference. On CUDA: fla's fused recurrent GLA (and
        causal_conv1d's conv update)."""
        B = x.shape[0]
        q, k, v, gk, gate, _, (conv, conv_path) = self._split(x[:, 0], state.conv, step=True, mask=mask)
        q, k, gk = (z.reshape(B, self.n_heads, self.head_k_dim) for z in (q, k, gk))  # [B, H, dk]
        v = v.reshape(B, self.n_heads, self.head_v_dim)
        gate = None if gate is None else gate[:, None]
        path = "" if conv_path is None else f"+{conv_path}"
        fn = step_kernel(*FLA_GLA_STEP, v, mask) if self.use_fast_path else None
        if fn is not None:
            self._ran(f"fla.fused_recurrent_gla{path}")
            o, S = fn(q[:, None], k[:, None], v[:, None], gk=gk[:, None], scale=self.head_k_dim ** -0.5,
                      initial_state=state.S, output_final_state=True)
            return self._out(o, gate, x.dtype), write_state(state, conv=conv, S=S)
        self._ran(f"torch.recurrent{step_refused(v)}{path}")
        acc = state.S.dtype
        o, S = gla_step(q.to(acc), k.to(acc), v.to(acc), gk.to(acc), state.S)
        S = S if mask is None else keep_pads(mask[:, -1], S, state.S)
        return self._out(o[:, None], gate, x.dtype), write_state(state, conv=conv, S=S)

    @classmethod
    def decode_cost(cls, genome: Genome, context: int) -> DecodeCost:
        m = cls.dims(genome)
        d, h, dk, dv, r = genome.d_model, m["n_heads"], m["head_k_dim"], m["head_v_dim"], m["rank"]
        key, val, kc = m["key_dim"], m["value_dim"], m["conv_size"]
        conv = (2 * key + val) if m["use_short_conv"] else 0
        gemm = d * (2 * key + val + r) + r * key + (d * val if m["use_output_gate"] else 0) + val * d
        weights = gemm + key + conv * kc + dv                     # + gk bias, conv weights, norm gain
        state = h * dk * dv + conv * (kc - 1)                     # recurrent state (+ conv window), read and rewritten
        # decay S, k v^T write, S^T q; conv; logsigmoid gate, gated RMSNorm.
        flops = 2 * gemm + 2 * kc * conv + 5 * h * dk * dv + 6 * key + 8 * val
        # Fused q|k|v|gk_down|g GEMM, gk up-projection GEMM, (conv update + SiLU), fused recurrent GLA
        # (logsigmoid inside), gated RMSNorm, o_proj.
        return layer_cost(d, weights, state, state, flops, launches=5 + (1 if conv else 0))
