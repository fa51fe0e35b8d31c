"""Compiled CPU kernels for proxy training: the (gated) delta rule and the SSD scan in their recurrent form, the
short causal conv + SiLU, causal / sliding-window attention for small heads, and a bf16 SwiGLU FFN, each with a
hand-written backward (csrc/cpu_kernels.cpp). Operators use them when flashsearch.model.fast.cpu_kernels_ has
switched them on (the proxy's fast path) and the inputs qualify (`applies`); otherwise their torch forms run.

At the proxy's sizes (16 x 16 states per head, 128-token sequences) the chunked torch forms spend their time on
[L, L] tensors and on ~100 small ops per layer; the recurrence keeps one head's state in L1 and does the same
maths exactly (fp32), in one call forward and one backward. The source is compiled once per machine on first use
(torch.utils.cpp_extension, ~30-60 s, cached under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions; `make setup`
does it). Without a C++ compiler `available()` is False and the operators keep their torch forms.

Layouts are the operators' own: [B, T, H, d] activations, fp32, CPU. The SwiGLU FFN runs its GEMMs in bf16
(the proxy's bf16 path, flashsearch.model.fast) and keeps its [N, 2F] / [N, F] intermediates in bf16 too, which
are exactly the values that path rounds them to anyway, without their fp32 copies and casts.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "cpu_kernels.cpp"
EXTENSION_NAME = "flashsearch_cpu_kernels"
STALE_LOCK_S = 1800


_BUILD_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    global _BUILD_LOCK                   # a forked child holds only the forking thread, never a lock's owner
    _BUILD_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _extension() -> Any | None:
    """The compiled module, built on first call (None, said once, when it cannot be built). Locked: evaluations
    running as threads of one process (ray.address=local) must not build or load it twice at once."""
    with _BUILD_LOCK:
        return _load()


@functools.lru_cache(maxsize=None)
def _load() -> Any | None:
    try:
        from torch.utils import cpp_extension

        _clear_stale_lock(cpp_extension)
        return cpp_extension.load(name=EXTENSION_NAME, sources=[str(SOURCE)],
                                  extra_cflags=["-O3", "-march=native", "-ffast-math"], verbose=False)
    except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a build error: the torch forms still work
        log.warning("flashsearch CPU kernels unavailable (%s: %s); proxies train with the slower torch forms",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None


def _clear_stale_lock(cpp_extension: Any) -> None:
    """torch waits forever on the build lock of a build that was killed; a lock older than any real build
    (STALE_LOCK_S) is removed so that the next process builds instead of hanging."""
    try:
        lock = Path(cpp_extension._get_build_directory(EXTENSION_NAME, False)) / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
    except (AttributeError, OSError):  # a private helper of torch's: if it moves, keep torch's own behaviour
        pass


def available() -> bool:
    """Whether the compiled kernels load (building them now if this machine has not yet)."""
    return _extension() is not None


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these inputs: fp32 CPU tensors, and the extension is built."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and available()


def _c(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


class _DeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, s0, scale):  # type: ignore[override]
        q, k, v, beta, g, s0 = (_c(z) for z in (q, k, v, beta, g, s0))
        o, S, ckpt = _extension().delta_fwd(q, k, v, beta, g, s0, scale)
        ctx.save_for_backward(q, k, v, beta, g, ckpt)
        ctx.scale, ctx.has_s0 = scale, s0 is not None
        return o, S

    @staticmethod
    def backward(ctx, do, dS):  # type: ignore[override]
        q, k, v, beta, g, ckpt = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dq, dk, dv, dbeta, dg, dS0 = _extension().delta_bwd(q, k, v, beta, g, ckpt, do, _c(dS), ctx.scale)
        return dq, dk, dv, dbeta, (dg if g is not None else None), (dS0 if ctx.has_s0 else None), None


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None = None,
               initial_state: torch.Tensor | None = None, scale: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (gated) delta rule, recurrent. q, k [b, t, h, dk] (k L2-normed by the caller); v [b, t, h, dv];
    beta [b, t, h]; g [b, t, h] log-decay (None = DeltaNet: no decay); initial_state [b, h, dk, dv] or None;
    scale defaults to dk**-0.5. Returns o [b, t, h, dv] and the final state [b, h, dk, dv]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _DeltaRule.apply(q, k, v, beta, g, initial_state, float(scale))


class _SSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, s0):  # type: ignore[override]
        x, dt, A, B, C, s0 = (_c(z) for z in (x, dt, A, B, C, s0))
        y, S, ckpt = _extension().ssd_fwd(x, dt, A, B, C, s0)
        ctx.save_for_backward(x, dt, A, B, C, ckpt)
        ctx.has_s0 = s0 is not None
        return y, S

    @staticmethod
    def backward(ctx, dy, dS):  # type: ignore[override]
        x, dt, A, B, C, ckpt = ctx.saved_tensors
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        dx, ddt, dA, dB, dC, dS0 = _extension().ssd_bwd(x, dt, A, B, C, ckpt, dy, _c(dS))
        return dx, ddt, dA, dB, dC, (dS0 if ctx.has_s0 else None)


def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba2's SSD scan, recurrent (no D skip); the arguments and results of kernels.mamba2.ssd_chunked."""
    return _SSD.apply(x, dt, A, B, C, initial_state)


class _ConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.weight_shape = weight.shape                                      # [C, 1, K]
        x, weight, bias = _c(x), weight.reshape(weight.shape[0], -1).contiguous(), _c(bias)
        ctx.save_for_backward(x, weight, bias)
        return _extension().conv_silu_fwd(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = _extension().conv_silu_bwd(x, weight, bias, dy.contiguous())
        return dx, dw.view(ctx.weight_shape), (db if bias is not None else None)


def conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """SiLU(causal depthwise conv) of x [B, T, C] with weight [C, 1, K] (nn.Conv1d's layout) and optional bias [C],
    from zero history: F.silu(_common.causal_conv1d(x, weight, bias)). Returns [B, T, C]."""
    return _ConvSiLU.apply(x, weight, bias).contiguous()


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, window):  # type: ignore[override]
        q, k, v = _c(q), _c(k), _c(v)
        o, lse = _extension().attn_fwd(q, k, v, scale, window)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale, ctx.window = scale, window
        return o

    @staticmethod
    def backward(ctx, do):  # type: ignore[override]
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _extension().attn_bwd(q, k, v, o, lse, do.contiguous(), ctx.scale, ctx.window)
        return dq, dk, dv, None, None


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention, query i over keys max(0, i - window + 1) .. i (window None = all earlier keys).
    q [B, H, T, D]; k, v [B, Hkv, T, D] with Hkv dividing H (GQA); scale defaults to D**-0.5. Returns [B, H, T, D].
    For the proxy's small heads (D = 16), where torch's fused CPU attention is dominated by its blocking overhead."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _Attention.apply(q, k, v, float(scale), int(window or 0))


BF16 = torch.bfloat16


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down):  # type: ignore[override]  # x [..., D]; w_gate/up [F, D]; w_down [D, F]
        lead, D = x.shape[:-1], x.shape[-1]
        xb = x.reshape(-1, D).to(BF16)                                       # [N, D]
        w1 = torch.cat([w_gate, w_up]).to(BF16)                              # [2F, D]
        wd = w_down.to(BF16)                                                 # [D, F]
        h = xb @ w1.t()                                                      # [N, 2F] = [gate | up]
        a = _extension().swiglu_fwd(h)                                       # [N, F] silu(gate) * up
        ctx.save_for_backward(xb, w1, wd, h, a)
        ctx.lead, ctx.F = lead, w_gate.shape[0]
        return (a @ wd.t()).to(x.dtype).view(*lead, D)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        xb, w1, wd, h, a = ctx.saved_tensors
        dyb = dy.reshape(-1, dy.shape[-1]).to(BF16)                          # [N, D]
        dw_down = (dyb.t() @ a).float()                                      # [D, F]
        dh = _extension().swiglu_bwd(h, (dyb @ wd).contiguous())            # [N, 2F]
        dx = (dh @ w1).float().view(*ctx.lead, -1)                           # [..., D]
        dw1 = (dh.t() @ xb).float()                                          # [2F, D]
        return dx, dw1[:ctx.F], dw1[ctx.F:], dw_down


def swiglu_bf16(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)) with bias-free fp32 weights, GEMMs in bf16 (fp32 accumulation); x [..., D] fp32
    -> [..., D] fp32. Gradients are fp32, for the fp32 master weights."""
    return _SwiGLU.apply(x, w_gate, w_up, w_down)
