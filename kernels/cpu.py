"""Compiled CPU kernels for proxy training: the (gated) delta rule and the SSD scan in their recurrent form, the
short causal conv + SiLU, causal / sliding-window attention for small heads, and a bf16 SwiGLU FFN, each with a
hand-written backward (csrc/cpu_kernels.cpp). Operators use them when flashsearch.model.fast.cpu_kernels_ has
switched them on (the proxy's fast path) and the inputs qualify (`applies`); otherwise their torch forms run.

The kernels are torch operators, `torch.ops.flashsearch.<name>_fwd` / `_bwd` (schemas in the C++ source); this
module gives each one a fake (shape-only) function and the forward ops an autograd formula that calls their
backward op, so that torch.compile can trace them and torch.library.opcheck can check them. The functions below
(delta_rule, ssd, conv_silu, causal_attention, swiglu_bf16) are what the operators call.

At the proxy's sizes (16 x 16 states per head, 128-token sequences) the chunked torch forms spend their time on
[L, L] tensors and on ~100 small ops per layer; the recurrence keeps one head's state in L1 and does the same
maths exactly (fp32), in one call forward and one backward. The source is compiled once per machine on first use
(torch.utils.cpp_extension; cached under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions and rebuilt when the
source or CFLAGS change; `make setup` does it). Without a C++ compiler `available()` is False and the operators
keep their torch forms.

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
# Not -ffast-math: its -ffinite-math-only lets the compiler assume NaN and inf away, and a NaN from a diverging
# proxy run must reach the loss, where the proxy's divergence check looks for it. Only the parts that keep NaN and
# inf: no errno or FP-exception flags to maintain (so floor and selects vectorize) and reassociation (so sums do;
# it needs -fno-signed-zeros). Without them the exp and sum loops stay scalar.
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros")
SEG = 32                                 # tokens between the scans' saved states: SEG in the C++ source


_BUILD_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    global _BUILD_LOCK                   # a forked child holds only the forking thread, never a lock's owner
    _BUILD_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _extension() -> bool:
    """Whether the operators are registered, building and loading the library on first call (False, said once,
    when it cannot be built). Locked: evaluations running as threads of one process (ray.address=local) must not
    build or load it twice at once."""
    with _BUILD_LOCK:
        return _load()


@functools.lru_cache(maxsize=None)
def _load() -> bool:
    try:
        from torch.utils import cpp_extension

        _clear_stale_lock(cpp_extension)
        cpp_extension.load(name=EXTENSION_NAME, sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
                           is_python_module=False, verbose=False)      # a plain library: its TORCH_LIBRARY registers
    except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a build error: the torch forms still work
        log.warning("flashsearch CPU kernels unavailable (%s: %s); proxies train with the slower torch forms",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False
    _register_fakes_and_autograd()
    return True


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
    return _extension()


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these inputs: fp32 CPU tensors, and the extension is built."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and available()


# ---- the functions the operators call ------------------------------------------------------------------------
# Each makes its inputs contiguous (the kernels index raw pointers) and calls one forward op; autograd runs the
# formula registered for that op below. Call them only where `applies` holds: the ops exist once the library
# is loaded.
OPS = torch.ops.flashsearch
BF16 = torch.bfloat16


def _c(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None = None,
               initial_state: torch.Tensor | None = None, scale: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (gated) delta rule, recurrent. q, k [b, t, h, dk] (k L2-normed by the caller); v [b, t, h, dv];
    beta [b, t, h]; g [b, t, h] log-decay (None = DeltaNet: no decay); initial_state [b, h, dk, dv] or None;
    scale defaults to dk**-0.5. Returns o [b, t, h, dv] and the final state [b, h, dk, dv]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, state, _ = OPS.delta_fwd(*(_c(z) for z in (q, k, v, beta, g, initial_state)), float(scale))
    return o, state


def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba2's SSD scan, recurrent (no D skip); the arguments and results of kernels.mamba2.ssd_chunked."""
    y, state, _ = OPS.ssd_fwd(*(_c(z) for z in (x, dt, A, B, C, initial_state)))
    return y, state


def conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """SiLU(causal depthwise conv) of x [B, T, C] with weight [C, 1, K] (nn.Conv1d's layout) and optional bias [C],
    from zero history: F.silu(_common.causal_conv1d(x, weight, bias)). Returns [B, T, C]."""
    return OPS.conv_silu_fwd(x.contiguous(), weight.reshape(weight.shape[0], -1).contiguous(), _c(bias))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention, query i over keys max(0, i - window + 1) .. i (window None = all earlier keys).
    q [B, H, T, D]; k, v [B, Hkv, T, D] with Hkv dividing H (GQA); scale defaults to D**-0.5. Returns [B, H, T, D].
    For the proxy's small heads (D = 16), where torch's fused CPU attention is dominated by its blocking overhead."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, _ = OPS.attn_fwd(q.contiguous(), k.contiguous(), v.contiguous(), float(scale), int(window or 0))
    return o


def swiglu_bf16(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)) with bias-free fp32 weights, GEMMs in bf16 (fp32 accumulation); x [..., D] fp32
    -> [..., D] fp32. Gradients are fp32, for the fp32 master weights: autograd rounds them where the forward
    rounded, and keeps the [N, 2F] / [N, F] intermediates in bf16 only."""
    lead, D = x.shape[:-1], x.shape[-1]
    w1 = torch.cat([w_gate, w_up]).to(BF16)                                  # [2F, D]
    h = x.reshape(-1, D).to(BF16) @ w1.t()                                   # [N, 2F] = [gate | up]
    a = OPS.swiglu_fwd(h)                                                    # [N, F] silu(gate) * up
    return (a @ w_down.to(BF16).t()).to(x.dtype).view(*lead, D)


# ---- fake (shape-only) functions, for torch.compile and FakeTensor tracing -------------------------------------
def _num_segments(T: Any) -> Any:
    return torch.sym_max((T + SEG - 1) // SEG, 1)


def _fake_delta_fwd(q, k, v, beta, g, initial_state, scale):  # type: ignore[no-untyped-def]
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    return q.new_empty(B, T, H, DV), q.new_empty(B, H, DK, DV), q.new_empty(B, H, _num_segments(T), DK, DV)


def _fake_delta_bwd(q, k, v, beta, g, checkpoints, grad_o, grad_state, scale):  # type: ignore[no-untyped-def]
    B, T, H, DK = q.shape
    dg = torch.empty_like(g) if g is not None else q.new_empty(0)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta), dg,
            q.new_empty(B, H, DK, v.shape[-1]))


def _fake_ssd_fwd(x, dt, A, B, C, initial_state):  # type: ignore[no-untyped-def]
    Bsz, T, H, P = x.shape
    N = B.shape[-1]
    return torch.empty_like(x), x.new_empty(Bsz, H, P, N), x.new_empty(Bsz, H, _num_segments(T), P, N)


def _fake_ssd_bwd(x, dt, A, B, C, checkpoints, grad_y, grad_state):  # type: ignore[no-untyped-def]
    Bsz, T, H, P = x.shape
    return (torch.empty_like(x), torch.empty_like(dt), torch.empty_like(A), torch.empty_like(B), torch.empty_like(C),
            x.new_empty(Bsz, H, P, B.shape[-1]))


def _fake_conv_silu_fwd(x, weight, bias):  # type: ignore[no-untyped-def]
    return torch.empty_like(x)


def _fake_conv_silu_bwd(x, weight, bias, grad_y):  # type: ignore[no-untyped-def]
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias) if bias is not None else x.new_empty(0)


def _fake_attn_fwd(q, k, v, scale, window):  # type: ignore[no-untyped-def]
    return torch.empty_like(q), q.new_empty(q.shape[:-1])


def _fake_attn_bwd(q, k, v, o, lse, grad_o, scale, window):  # type: ignore[no-untyped-def]
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fake_swiglu_fwd(h):  # type: ignore[no-untyped-def]
    return h.new_empty(h.shape[0], h.shape[1] // 2)


def _fake_swiglu_bwd(h, grad_a):  # type: ignore[no-untyped-def]
    return torch.empty_like(h)


# ---- autograd formulas: each forward op's backward is its _bwd op ------------------------------------------------
# Gradients of unused outputs arrive as None (set_materialize_grads(False)): the kernels start from no gradient.
def _setup_delta(ctx, inputs, output):  # type: ignore[no-untyped-def]
    q, k, v, beta, g, initial_state, scale = inputs
    ctx.save_for_backward(q, k, v, beta, g, output[2])
    ctx.scale, ctx.has_initial_state = scale, initial_state is not None
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)


def _backward_delta(ctx, grad_o, grad_state, _):  # type: ignore[no-untyped-def]
    q, k, v, beta, g, checkpoints = ctx.saved_tensors
    grad_o = torch.zeros_like(v) if grad_o is None else grad_o.contiguous()
    dq, dk, dv, dbeta, dg, ds0 = OPS.delta_bwd(q, k, v, beta, g, checkpoints, grad_o, _c(grad_state), ctx.scale)
    return dq, dk, dv, dbeta, (dg if g is not None else None), (ds0 if ctx.has_initial_state else None), None


def _setup_ssd(ctx, inputs, output):  # type: ignore[no-untyped-def]
    x, dt, A, B, C, initial_state = inputs
    ctx.save_for_backward(x, dt, A, B, C, output[2])
    ctx.has_initial_state = initial_state is not None
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)


def _backward_ssd(ctx, grad_y, grad_state, _):  # type: ignore[no-untyped-def]
    x, dt, A, B, C, checkpoints = ctx.saved_tensors
    grad_y = torch.zeros_like(x) if grad_y is None else grad_y.contiguous()
    dx, ddt, dA, dB, dC, ds0 = OPS.ssd_bwd(x, dt, A, B, C, checkpoints, grad_y, _c(grad_state))
    return dx, ddt, dA, dB, dC, (ds0 if ctx.has_initial_state else None)


def _setup_conv_silu(ctx, inputs, output):  # type: ignore[no-untyped-def]
    ctx.save_for_backward(*inputs)


def _backward_conv_silu(ctx, grad_y):  # type: ignore[no-untyped-def]
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = OPS.conv_silu_bwd(x, weight, bias, grad_y.contiguous())
    return dx, dw, (db if bias is not None else None)


def _setup_attn(ctx, inputs, output):  # type: ignore[no-untyped-def]
    q, k, v, scale, window = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.scale, ctx.window = scale, window
    ctx.mark_non_differentiable(output[1])


def _backward_attn(ctx, grad_o, _):  # type: ignore[no-untyped-def]
    q, k, v, o, lse = ctx.saved_tensors
    return (*OPS.attn_bwd(q, k, v, o, lse, grad_o.contiguous(), ctx.scale, ctx.window), None, None)


def _setup_swiglu(ctx, inputs, output):  # type: ignore[no-untyped-def]
    ctx.save_for_backward(inputs[0])


def _backward_swiglu(ctx, grad_a):  # type: ignore[no-untyped-def]
    (h,) = ctx.saved_tensors
    return OPS.swiglu_bwd(h, grad_a.contiguous())


_FAKES = {"delta_fwd": _fake_delta_fwd, "delta_bwd": _fake_delta_bwd, "ssd_fwd": _fake_ssd_fwd,
          "ssd_bwd": _fake_ssd_bwd, "conv_silu_fwd": _fake_conv_silu_fwd, "conv_silu_bwd": _fake_conv_silu_bwd,
          "attn_fwd": _fake_attn_fwd, "attn_bwd": _fake_attn_bwd, "swiglu_fwd": _fake_swiglu_fwd,
          "swiglu_bwd": _fake_swiglu_bwd}
_AUTOGRAD = {"delta_fwd": (_backward_delta, _setup_delta), "ssd_fwd": (_backward_ssd, _setup_ssd),
             "conv_silu_fwd": (_backward_conv_silu, _setup_conv_silu), "attn_fwd": (_backward_attn, _setup_attn),
             "swiglu_fwd": (_backward_swiglu, _setup_swiglu)}


def _register_fakes_and_autograd() -> None:
    """Once, after the library has defined the ops (register_autograd needs them to exist)."""
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"flashsearch::{name}", fake)
    for name, (backward, setup) in _AUTOGRAD.items():
        torch.library.register_autograd(f"flashsearch::{name}", backward, setup_context=setup)
