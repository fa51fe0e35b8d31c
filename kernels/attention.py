"""Causal softmax attention with GQA and RoPE: full (`attention`) and sliding-window (`swa`).

Full attention keeps a KV cache preallocated to max_len; sliding-window attention keeps a ring buffer of the
last `window` keys/values, so its decode state (and cost) stops growing once the context exceeds the window.
Keys are rotated (RoPE) at their absolute position *before* they are cached, so the order of the entries in
the cache does not matter to softmax attention; that is what makes the ring buffer valid.

`step` is capturable in a CUDA graph: the position lives in a device tensor (`KVCache.pos`) that the step reads
for RoPE and the cache slot and advances in place, the cache is written in place (`index_copy_`), and the number
of cache rows attended is a static shape (`KVCache.rows`, masked to the filled rows), so replaying a captured step
decodes the next token. Layouts: activations [B, T, H, hd] at the boundary; the cache and SDPA use [B, H, T, hd].

Padded batches (a `mask`, see kernels/base.py) take a separate, eager path: positions (RoPE, the window) count
each row's real tokens only; pads are never attended to (a pad query attends to itself, to stay finite) and never
written to the cache. Each row's real tokens fill its own cache rows from 0 (`KVCache.lengths`, per row), so a
row's cache holds exactly what it would alone, ring included; once a cache has per-row lengths, every later call
takes this path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.operators import option

from . import cpu
from ._common import (adjacent, apply_rope, arange_cached, fused_linear, joined, layer_cost, real_positions,
                      rope_cos_sin, rope_table)
from .base import DecodeCost, Operator, ProxyScale


@dataclass
class KVCache:
    """Decode state of one attention layer (all sequences in the batch advance together).

    k, v: [B, Hkv, S, hd] with S = max_len, or the window for swa (a ring).
    pos:  [] int64 on the cache's device, tokens consumed so far; `step` reads it and advances it in place.
    seen: the host's count of the same, kept by eager calls (prefill, step) for the overflow check and prefill.
          A replayed CUDA graph runs no Python, so whoever replays keeps it (the static decoder resets it).
    rows: cache rows one `step` attends over, a static shape >= pos + 1 (capped at S), masked to the filled rows;
          None = exactly the filled rows, known from `seen` (eager decoding). Set it before capturing a step.
    lengths: [B] int64, real tokens each row has consumed, once a padded batch went through (None before: every
          row has consumed `seen`). Row b's token at position p sits in row p (p % S in a ring); pos and seen
          then count calls' tokens, pads included (an upper bound of every length, for the room check).
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor
    seen: int = 0
    rows: int | None = None
    lengths: torch.Tensor | None = None
    max_len: int = 0                                 # positions init_state made room for (the RoPE table's length)


class Attention(Operator):
    """Full causal attention, GQA (n_heads query heads share n_kv_heads key/value heads), RoPE."""

    name: ClassVar[str] = "attention"
    letter: ClassVar[str] = "A"
    role: ClassVar[str] = "mixer"
    aliases: ClassVar[tuple[str, ...]] = ("attn", "full_attention")
    hf_name: ClassVar[str | None] = "full_attention"     # transformers' name for it
    uses_cpu_kernels: ClassVar[bool] = True
    supports_padding: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Options:
        rope_theta: float = option(10000.0, gt=0)       # RoPE base

    opts: Options
    readers: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj")
    writers: ClassVar[tuple[str, ...]] = ("o_proj",)
    # Always torch SDPA, which itself dispatches to flash / memory-efficient attention on CUDA (no torch-form
    # fallback to choose): reported like the other operators' fast paths.
    fast_path: ClassVar[str] = "sdpa"

    def __init__(self, genome: Genome):
        super().__init__(genome)
        self.rope_theta = self.opts.rope_theta
        if genome.head_dim % 2:
            raise FlashsearchError(f"operator {self.name!r} needs an even head_dim for RoPE, got "
                                   f"head_dim={genome.head_dim} (genome.head_dim); use an even value")
        self.n_heads, self.n_kv_heads, self.head_dim = genome.n_heads, genome.n_kv_heads, genome.head_dim
        d = genome.d_model
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    # Sliding-window size (tokens visible to a query, itself included); None = unlimited.
    @property
    def window(self) -> int | None:
        return None

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project and rotate. x [B, T, D] at absolute positions [T] or, per row, [B, T] (device tensors) ->
        q [B, H, T, hd], k, v [B, Hkv, T, hd]."""
        B, T, _ = x.shape
        q, k, v = fused_linear(x, self.q_proj, self.k_proj, self.v_proj)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(positions.reshape(-1), self.head_dim, self.rope_theta, q.dtype)
        if positions.dim() == 2:                                            # per row: [B, 1, T, hd/2]
            cos, sin = (z.view(B, 1, T, -1) for z in (cos, sin))
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _positions(self, start: int, T: int, device: torch.device) -> torch.Tensor:
        return torch.arange(start, start + T, device=device)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None = None,
                k_pos: torch.Tensor | None = None) -> torch.Tensor:
        """SDPA with GQA. Without positions: plain causal over aligned q/k (the training path).
        With absolute positions q_pos [Tq], k_pos [Tk]: causal (and windowed) mask built from them."""
        gqa = self.n_heads != self.n_kv_heads
        if q_pos is None or k_pos is None:
            if self.cpu_kernel_applies(q, k, v):            # the proxy's CPU path: small heads, see kernels/cpu.py
                self._ran("cpu_kernel.attention")
                return cpu.causal_attention(q, k, v, self.window)
            Tq = q.shape[-2]
            self._ran("sdpa")
            if self.window is None or Tq <= self.window:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            idx = torch.arange(Tq, device=q.device)
            q_pos, k_pos = idx, idx
        self._ran("sdpa")
        mask = k_pos[None, :] <= q_pos[:, None]                             # [Tq, Tk], True = attend
        if self.window is not None:
            mask = mask & (k_pos[None, :] > q_pos[:, None] - self.window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = y.shape                                                # [B, H, T, hd]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            return self._forward_padded(x, mask)
        q, k, v = self._qkv(x, self._positions(0, x.shape[1], x.device))
        return self._out(self._attend(q, k, v))

    # ---- padded batches (see the module docstring) ------------------------------------------------------
    def _allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor, q_real: torch.Tensor,
                 k_real: torch.Tensor) -> torch.Tensor:
        """Which key each query attends to, per row: [B, Tq, Tk] from per-row positions and real-token flags.
        Real tokens have strictly increasing positions along a row, so position order is causal order."""
        allowed = k_real[:, None, :] & q_real[:, :, None] & (k_pos[:, None, :] <= q_pos[:, :, None])
        if self.window is not None:
            allowed = allowed & (k_pos[:, None, :] > q_pos[:, :, None] - self.window)
        return allowed

    def _attend_masked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """SDPA with a per-row mask allowed [B, Tq, Tk] (every query allows at least one key)."""
        self._ran("sdpa")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None],
                                              enable_gqa=self.n_heads != self.n_kv_heads)

    def _forward_padded(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = real_positions(mask)
        q, k, v = self._qkv(x, pos)
        eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)     # a pad query attends to itself
        return self._out(self._attend_masked(q, k, v, self._allowed(pos, pos, mask, mask) | eye))

    def _lengths(self, state: KVCache, batch: int) -> torch.Tensor:
        return state.lengths if state.lengths is not None else torch.full(
            (batch,), state.seen, dtype=torch.long, device=state.k.device)

    def _prefill_padded(self, x: torch.Tensor, state: KVCache, mask: torch.Tensor | None
                        ) -> tuple[torch.Tensor, KVCache]:
        """prefill for a padded batch or a cache with per-row lengths: attend over each row's cached tokens and its
        real new ones, then write the new real tokens to the row's own cache rows (the last S of them in a ring)."""
        B, T = x.shape[:2]
        self._check_room(state, T)
        mask = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        S = state.k.shape[2]
        lengths = self._lengths(state, B)
        pos = real_positions(mask, lengths)                                 # [B, T]
        q, k, v = self._qkv(x, pos)
        # Cache row j holds the latest position p <= length-1 with p % S == j (p = j until a ring wraps).
        rows = min(state.seen, S)
        last = (lengths - 1)[:, None]
        cached_pos = last - (last - torch.arange(rows, device=x.device)) % S                  # [B, rows]
        k_pos = torch.cat([cached_pos, pos], dim=1)
        k_real = torch.cat([cached_pos >= 0, mask], dim=1)
        allowed = self._allowed(pos, k_pos, mask, k_real)
        allowed[:, :, rows:] |= torch.eye(T, dtype=torch.bool, device=x.device)
        y = self._attend_masked(q, torch.cat([state.k[:, :, :rows], k], dim=2),
                                torch.cat([state.v[:, :, :rows], v], dim=2), allowed)
        new_lengths = lengths + mask.sum(1)
        write = mask & (pos >= (new_lengths - S)[:, None])                  # distinct rows: the last S real tokens
        b_idx, t_idx = write.nonzero(as_tuple=True)
        slots = pos[b_idx, t_idx] % S
        state.k[b_idx, :, slots] = k[b_idx, :, t_idx]
        state.v[b_idx, :, slots] = v[b_idx, :, t_idx]
        state.lengths = new_lengths
        state.pos.add_(T)
        state.seen += T
        return self._out(y), state

    def _step_padded(self, x: torch.Tensor, state: KVCache, mask: torch.Tensor | None) -> tuple[torch.Tensor, KVCache]:
        """step for a padded batch or a cache with per-row lengths: a row fed a pad writes nothing and keeps its
        length."""
        B = x.shape[0]
        self._check_room(state, 1)
        S = state.k.shape[2]
        real = torch.ones(B, dtype=torch.bool, device=x.device) if mask is None else mask[:, -1]
        lengths = self._lengths(state, B)
        q, k, v = self._qkv(x, lengths[:, None])
        b_idx = real.nonzero(as_tuple=True)[0]
        slots = lengths[b_idx] % S
        state.k[b_idx, :, slots] = k[b_idx, :, 0]
        state.v[b_idx, :, slots] = v[b_idx, :, 0]
        new_lengths = lengths + real.long()
        rows = min(state.seen + 1, S)
        # Filled rows: the first min(length, S); a row that has seen nothing attends to its (zero) row 0.
        keep = torch.arange(rows, device=x.device)[None, :] < new_lengths.clamp_min(1)[:, None]
        y = self._attend_rows(q, state.k[:, :, :rows], state.v[:, :, :rows], keep)
        state.lengths = new_lengths
        state.pos.add_(1)
        state.seen += 1
        return self._out(y), state

    # ---- decoding --------------------------------------------------------------------------------------
    def _cache_len(self, max_len: int) -> int:
        return max_len

    def init_state(self, batch: int, max_len: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> KVCache:
        shape = (batch, self.n_kv_heads, self._cache_len(max_len), self.head_dim)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                       torch.zeros((), dtype=torch.long, device=device), max_len=max_len)

    def _check_room(self, state: KVCache, n: int) -> None:
        # A window-sized ring never runs out; a cache shorter than the window (max_len < window) does.
        cache_len = state.k.shape[2]
        if (self.window is None or cache_len < self.window) and state.seen + n > cache_len:
            raise FlashsearchError(f"operator {self.name!r}: decoding past max_len={state.k.shape[2]} tokens; "
                                   "call init_state with a larger max_len")

    def step(self, x: torch.Tensor, state: KVCache, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """x [B, 1, D] -> y [B, 1, D]: write this token's k/v at row pos (ring slot pos % S for swa), attend over
        `state.rows` cache rows masked to the filled ones, advance pos. Capturable (see the module docstring)."""
        if mask is not None or state.lengths is not None:
            return self._step_padded(x, state, mask)
        self._check_room(state, 1)
        S = state.k.shape[2]
        rows = min(state.seen + 1, S) if state.rows is None else min(state.rows, S)
        pos = state.pos.view(1)                                             # [1], on the device
        q, k, v = self._qkv_step(x, pos, state)                             # q [B, H, 1, hd], k, v [B, Hkv, 1, hd]
        slot = pos if self.window is None else pos % S                      # a ring never runs out (_check_room)
        state.k.index_copy_(2, slot, k)
        state.v.index_copy_(2, slot, v)
        # Filled rows are 0..pos (all S once a ring has wrapped, as then pos >= S).
        filled = arange_cached(rows, x.device) <= pos                       # [rows]
        y = self._attend_rows(q, state.k[:, :, :rows], state.v[:, :, :rows], filled)
        state.pos.add_(1)
        state.seen += 1
        return self._out(y), state

    def _qkv_step(self, x: torch.Tensor, pos: torch.Tensor, state: KVCache
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """_qkv for one token x [B, 1, D] at position pos [1]: the same numbers, fewer kernels. When q and k come
        out of one stacked GEMM (the CUDA decode step) they are rotated together, as one [B, H + Hkv, hd] view, with
        cos/sin gathered from a table made once (`rope_table`, while the position is inside init_state's max_len)."""
        B, hd, H, Hkv = x.shape[0], self.head_dim, self.n_heads, self.n_kv_heads
        q, k, v = fused_linear(x, self.q_proj, self.k_proj, self.v_proj)   # [B, 1, H*hd], [B, 1, Hkv*hd] x 2
        if adjacent(q, k) and state.seen < state.max_len:                   # one GEMM's output: rotate once
            table = rope_table(hd, float(self.rope_theta), state.max_len, x.device, q.dtype)
            c, s = table.index_select(0, pos).unbind(1)                      # [1, hd] each
            qk = joined(q, k).view(B, H + Hkv, hd)
            qk = torch.addcmul(qk * c, torch.cat([qk[..., hd // 2:], qk[..., :hd // 2]], -1), s)
            q, k = qk.split([H, Hkv], dim=1)
        else:
            cos, sin = rope_cos_sin(pos, hd, self.rope_theta, q.dtype)      # [1, hd/2]
            q, k = apply_rope(q.view(B, H, hd), cos, sin), apply_rope(k.view(B, Hkv, hd), cos, sin)
        return q[:, :, None], k[:, :, None], v.view(B, 1, Hkv, hd).transpose(1, 2)

    def _attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """One query token over cached rows: q [B, H, 1, hd]; k, v [B, Hkv, n, hd]; keep [n] or per row [B, n] (bool)
        -> [B, H, 1, hd].

        The query heads sharing a key/value head are folded into the query-length dim ([B, Hkv, H/Hkv, hd]), so GQA
        needs neither enable_gqa nor copies of K/V, and the mask is a plain broadcast [1, 1, 1, n] boolean: the
        form the fused memory-efficient SDPA backend accepts (a boolean mask with enable_gqa runs only on the
        math backend, which copies K/V to every query head)."""
        B, H, _, hd = q.shape
        self._ran("sdpa")
        qg = q.reshape(B, self.n_kv_heads, H // self.n_kv_heads, hd)         # head i reads kv head i // (H/Hkv)
        attn_mask = keep.view(1, 1, 1, -1) if keep.dim() == 1 else keep[:, None, None, :]
        y = F.scaled_dot_product_attention(qg, k, v, attn_mask=attn_mask)
        return y.reshape(B, H, 1, hd)

    def prefill(self, x: torch.Tensor, state: KVCache, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, KVCache]:
        """x [B, T, D] continuing from state.seen: fill the cache and return the outputs (== T steps)."""
        if mask is not None or state.lengths is not None:
            return self._prefill_padded(x, state, mask)
        T = x.shape[1]
        self._check_room(state, T)
        start = state.seen
        q, k, v = self._qkv(x, self._positions(start, T, x.device))
        state.k[:, :, start:start + T] = k
        state.v[:, :, start:start + T] = v
        state.pos.add_(T)
        state.seen += T
        if start == 0:                                                      # empty cache: the training path
            return self._out(self._attend(q, k, v)), state
        pos = torch.arange(start + T, device=x.device)
        y = self._attend(q, state.k[:, :, :start + T], state.v[:, :, :start + T], pos[start:], pos)
        return self._out(y), state

    @classmethod
    def _kv_len(cls, genome: Genome, context: int) -> int:
        """Cache rows one decode step reads: the `context` earlier tokens plus the one just appended."""
        return context + 1

    @classmethod
    def decode_cost(cls, genome: Genome, context: int) -> DecodeCost:
        cls.options_of(genome)                                              # unknown options are errors here too
        d, h, hkv, hd = genome.d_model, genome.n_heads, genome.n_kv_heads, genome.head_dim
        weights = 2 * d * h * hd + 2 * d * hkv * hd
        kv = cls._kv_len(genome, context)
        attn_flops = 4 * h * hd * kv                    # q.k and p.v over the attended keys
        # Fused QKV GEMM, RoPE + cache append, flash-decoding attention, o_proj GEMM.
        return layer_cost(d, weights, state_read=2 * hkv * hd * kv, state_write=2 * hkv * hd,
                          flops=2 * weights + attn_flops, launches=4)


class SlidingWindowAttention(Attention):
    """Causal attention where each query sees only the last `window` tokens (itself included)."""

    name: ClassVar[str] = "swa"
    letter: ClassVar[str] = "S"
    aliases: ClassVar[tuple[str, ...]] = ("sliding_attention",)
    hf_name: ClassVar[str | None] = "sliding_attention"

    @dataclass(frozen=True)
    class Options(Attention.Options):
        window: int = option(512, ge=1)                 # tokens a query sees, itself included

    opts: Options

    @classmethod
    def proxy_options(cls, options: Options, scale: ProxyScale) -> dict[str, int]:
        """A proxy keeps the window's share of the training context: window * seq_len / reference_context (a
        512 window of a 2048 context stays a quarter of a 128-byte proxy context, not all of it)."""
        if scale.reference_context is None:
            return {}
        return {"window": max(1, round(options.window * scale.seq_len / scale.reference_context))}

    def __init__(self, genome: Genome):
        super().__init__(genome)
        self._window = self.opts.window

    @property
    def window(self) -> int | None:
        return self._window

    def _cache_len(self, max_len: int) -> int:
        return min(self._window, max_len)

    def prefill(self, x: torch.Tensor, state: KVCache, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, KVCache]:
        """x [B, T, D] continuing from state.seen: attend over (ring contents + x) with the band mask, then keep
        the last `window` tokens in the ring."""
        if mask is not None or state.lengths is not None:
            return self._prefill_padded(x, state, mask)
        T, ring = x.shape[1], state.k.shape[2]
        self._check_room(state, T)
        start = state.seen
        q, k, v = self._qkv(x, self._positions(start, T, x.device))
        old_pos = torch.arange(max(0, start - ring + 1), start, device=x.device)    # still-visible past tokens
        slots = old_pos % ring
        keys = torch.cat([state.k[:, :, slots], k], dim=2)                          # [B, Hkv, n_old + T, hd]
        vals = torch.cat([state.v[:, :, slots], v], dim=2)
        new_pos = torch.arange(start, start + T, device=x.device)
        y = self._attend(q, keys, vals, new_pos, torch.cat([old_pos, new_pos]))
        keep = min(T, ring)
        state.k[:, :, new_pos[-keep:] % ring] = k[:, :, -keep:]
        state.v[:, :, new_pos[-keep:] % ring] = v[:, :, -keep:]
        state.pos.add_(T)
        state.seen += T
        return self._out(y), state

    @classmethod
    def _kv_len(cls, genome: Genome, context: int) -> int:
        return min(context + 1, cls.options_of(genome).window)             # the ring never holds more than `window` rows
