"""The CUDA decode path on any device: every fused kernel an operator looks up (fla, mamba-ssm, causal-conv1d)
replaced by a stand-in that honours the kernel's contract (shapes, dtypes, the state written in place) in fp32
torch, with the operators' CUDA predicate forced on.

Two users: the kernel census (census.py, `fused=True`) counts the CUDA step on the meta device, each stand-in
counted as the launches its operator declares next to its step (`Operator.step_kernels`); and the tests check the
operators' glue against the stand-ins (tests/test_fast_paths.py), and against the real kernels under Triton's
interpreter by passing them as `stand_ins`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode


# ---- stand-ins of the fused kernels' contracts (fp32 arithmetic inside, as the kernels) --------------------------
def _l2(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.square().sum(-1, keepdim=True) + 1e-6)


def fused_recurrent_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None,
                                     gk: torch.Tensor | None = None, gv: torch.Tensor | None = None,
                                     beta: torch.Tensor | None = None, scale: float | None = None,
                                     initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                                     use_qk_l2norm_in_kernel: bool = False, **_: Any
                                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla's contract (0.6: gk, gv come between g and beta; not used by us): q, k [B, T, H, K]; v [B, T, H, V];
    g, beta [B, T, H]; state [B, H, K, V] (fp32 out)."""
    assert gk is None and gv is None, "stand-in: per-channel gates are not part of our contract"
    B, T, H, K = q.shape
    qf, kf, vf = q.float(), k.float(), v.float()
    if use_qk_l2norm_in_kernel:
        qf, kf = _l2(qf), _l2(kf)
    S = (q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32) if initial_state is None
         else initial_state.float().clone())
    beta = torch.ones(B, T, H) if beta is None else beta.float()
    outs = []
    for t in range(T):
        if g is not None:
            S = S * g[:, t].float().exp()[..., None, None]
        u = beta[:, t, :, None] * (vf[:, t] - (kf[:, t, :, :, None] * S).sum(-2))
        S = S + kf[:, t, :, :, None] * u[:, :, None, :]
        outs.append(((qf[:, t] * (K ** -0.5 if scale is None else scale))[..., None] * S).sum(-2))
    return torch.stack(outs, 1).to(v.dtype), (S if output_final_state else None)


def fused_recurrent_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor | None = None,
                               **kw: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla's contract: the gated rule without decay."""
    return fused_recurrent_gated_delta_rule(q, k, v, beta=beta, **kw)


def fused_recurrent_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gk: torch.Tensor | None = None,
                        gv: torch.Tensor | None = None, scale: float | None = None,
                        initial_state: torch.Tensor | None = None, output_final_state: bool = False, **_: Any
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla's contract: q, k, gk [B, T, H, K]; v [B, T, H, V]; state [B, H, K, V] (fp32 out)."""
    B, T, H, K = q.shape
    S = (q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32) if initial_state is None
         else initial_state.float().clone())
    outs = []
    for t in range(T):
        S = S * gk[:, t].float().exp()[..., None] + k[:, t].float()[..., None] * v[:, t].float()[:, :, None, :]
        outs.append(((q[:, t].float() * (K ** -0.5 if scale is None else scale))[..., None] * S).sum(-2))
    return torch.stack(outs, 1).to(v.dtype), (S if output_final_state else None)


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                           dt_bias: torch.Tensor | None = None, dt_softplus: bool = False, **_: Any) -> torch.Tensor:
    """mamba_ssm's contract (its selective_state_update_ref): state [b, h, p, n] updated IN PLACE; x, dt [b, h, p];
    A [h, p, n]; B, C [b, g, n]; D, dt_bias [h, p]. Returns y [b, h, p] in x's dtype."""
    r = x.shape[1] // B.shape[1]
    dt = dt.float() + (0 if dt_bias is None else dt_bias.float())
    dt = F.softplus(dt) if dt_softplus else dt
    Bh, Ch = (t.float().repeat_interleave(r, dim=1) for t in (B, C))     # [b, h, n]
    new = state.float() * (dt[..., None] * A.float()).exp() + (dt * x.float())[..., None] * Bh[:, :, None, :]
    state.copy_(new)
    y = (new * Ch[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + x.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, activation: str | None = None, **_: Any) -> torch.Tensor:
    """causal_conv1d's contract: x [B, C]; conv_state [B, C, K-1] shifted IN PLACE; weight [C, K]."""
    window = torch.cat([conv_state.float(), x.float()[..., None]], dim=-1)
    y = (window * weight.float()).sum(-1) + (0 if bias is None else bias.float())
    conv_state.copy_(window[..., 1:])
    return (F.silu(y) if activation in ("silu", "swish") else y).to(x.dtype)


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                           **kw: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla's contract of the chunk kernel (g and beta positional, unlike the fused recurrent one)."""
    return fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, **kw)


def mamba_chunk_scan_combined(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                              chunk_size: int, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                              dt_bias: torch.Tensor | None = None, initial_states: torch.Tensor | None = None,
                              dt_softplus: bool = False, return_final_states: bool = False, **_: Any) -> Any:
    """mamba_ssm's contract (the prefill's scan; z unused by our Mamba2): our torch SSD scan in fp32."""
    from flashsearch.kernels.mamba2 import ssd_chunked

    dt = dt.float() + (0 if dt_bias is None else dt_bias.float())
    dt = F.softplus(dt) if dt_softplus else dt
    y, final = ssd_chunked(x.float(), dt, A.float(), B.float(), C.float(), chunk_size,
                           None if initial_states is None else initial_states.float())
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return (y.to(x.dtype), final) if return_final_states else y.to(x.dtype)


def causal_conv1d_fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     activation: str | None = None, **_: Any) -> torch.Tensor:
    """causal_conv1d's contract: x [B, C, T] (zero history), weight [C, K]."""
    K = weight.shape[-1]
    y = F.conv1d(F.pad(x.float(), (K - 1, 0)), weight.float()[:, None], None if bias is None else bias.float(),
                 groups=x.shape[1])
    return (F.silu(y) if activation in ("silu", "swish") else y).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
             residual: torch.Tensor | None = None, eps: float = 1e-5, prenorm: bool = False, **_: Any) -> Any:
    """fla's contract (fla.modules.norm.layernorm.rms_norm): RMSNorm(x + residual); with prenorm also the sum."""
    r = x if residual is None else x + residual
    out = F.rms_norm(r.float(), (r.shape[-1],), weight.float(), eps).to(x.dtype)
    return (out, r) if prenorm else out


def swiglu(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """fla's contract (fla.modules.activations.swiglu): silu(x) * y, computed in fp32."""
    return (F.silu(x.float()) * y.float()).to(x.dtype)


# What each kernel the operators look up is replaced by. The chunk kernels (a prefill's) run the recurrent contract
# token by token: right, and never part of a decode step's census.
STAND_INS: dict[tuple[str, str], Callable[..., Any]] = {
    ("fla.ops.delta_rule", "chunk_delta_rule"): fused_recurrent_delta_rule,
    ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule"): chunk_gated_delta_rule,
    ("fla.ops.gla", "chunk_gla"): fused_recurrent_gla,
    ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"): mamba_chunk_scan_combined,
    ("causal_conv1d", "causal_conv1d_fn"): causal_conv1d_fn,
    ("fla.ops.delta_rule", "fused_recurrent_delta_rule"): fused_recurrent_delta_rule,
    ("fla.ops.gated_delta_rule", "fused_recurrent_gated_delta_rule"): fused_recurrent_gated_delta_rule,
    ("fla.ops.gla", "fused_recurrent_gla"): fused_recurrent_gla,
    ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update"): selective_state_update,
    ("causal_conv1d", "causal_conv1d_update"): causal_conv1d_update,
    ("fla.modules.norm.layernorm", "rms_norm"): rms_norm,
    ("fla.modules.activations", "swiglu"): swiglu,
}


def _launching(key: tuple[str, str], fn: Callable[..., Any], launches: dict[tuple[str, str], int],
               calls: dict[tuple[str, str], int]) -> Callable[..., Any]:
    """fn, counted as the kernel launches it stands for (in the active census, its own ops not counted)."""
    def run(*args: Any, **kwargs: Any) -> Any:
        calls[key] = calls.get(key, 0) + 1
        mode = _get_current_dispatch_mode()
        if mode is None or not hasattr(mode, "add"):
            return fn(*args, **kwargs)
        for _ in range(launches.get(key, 1)):
            mode.add(f"kernel.{key[1]}")
        if key[0].startswith("fla."):      # fla's input_guard copies every non-contiguous tensor argument first
            for t in [*args, *kwargs.values()]:
                if isinstance(t, torch.Tensor) and not t.is_contiguous():
                    mode.add("aten.clone(fla input_guard)")
        with _disable_current_modes():
            return fn(*args, **kwargs)
    return run


@contextlib.contextmanager
def cuda_path(calls: dict[tuple[str, str], int] | None = None,
              stand_ins: dict[tuple[str, str], Callable[..., Any]] | None = None) -> Iterator[dict]:
    """Operators built and run inside take their CUDA decode path on any device: the CUDA predicate is on and every
    fused kernel is its stand-in. Yields the per-kernel call counts."""
    from flashsearch.kernels import _common, deltanet, gated_deltanet, gla, mamba2
    from flashsearch.kernels.base import Operator

    calls = {} if calls is None else calls
    launches: dict[tuple[str, str], int] = {}
    todo = [Operator]
    while todo:                                                      # every operator class, plugins included
        cls = todo.pop()
        todo += cls.__subclasses__()
        launches.update(getattr(cls, "step_kernels", {}))
    table = {k: _launching(k, f, launches, calls) for k, f in (stand_ins or STAND_INS).items()}
    lookup = lambda module, fn: table.get((module, fn), _unused(module, fn))   # noqa: E731
    saved = []
    for mod, name, value in [(_common, "cuda_kernel", lookup), (deltanet, "cuda_kernel", lookup),
                             (mamba2, "cuda_kernel", lookup), (gated_deltanet, "fla_kernel", lookup),
                             (gla, "fla_kernel", lookup)] + [
            (m, "on_cuda", lambda x: True) for m in (_common, deltanet, mamba2, gated_deltanet, gla)]:
        saved.append((mod, name, getattr(mod, name)))
        setattr(mod, name, value)
    try:
        yield calls
    finally:
        for mod, name, value in reversed(saved):
            setattr(mod, name, value)


def _unused(module: str, fn: str) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{module}.{fn} has no stand-in: a decode step should not call it")
    return fail


__all__ = ["STAND_INS", "cuda_path"]
