"""Small building blocks shared by the operators: RMSNorm, short causal conv, RoPE, option checks, and the
lookup of the optional CUDA kernels (fast paths)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from typing import Any, Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu
from .base import DecodeCost

_Fn = TypeVar("_Fn", bound=Callable[..., Any])

log = logging.getLogger(__name__)


# ---- optional CUDA kernels (the fast paths) ---------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def cuda_kernel(module: str, fn: str) -> Callable[..., Any] | None:
    """The fused kernel `module.fn` (fla, mamba_ssm, causal_conv1d), or None without CUDA or without the package;
    the torch form is then the fallback. Cached: operators resolve their fast path once, at construction.
    When CUDA is present but the package does not import, says so once per package, at WARNING, with the import
    error: a GPU run on the torch forms is many times slower and must not pass unnoticed."""
    if not torch.cuda.is_available():
        return None
    try:
        return getattr(__import__(module, fromlist=[fn]), fn)
    except Exception as exc:  # noqa: BLE001 - any import problem (missing, no triton, ABI mismatch) = no fast path
        _note_missing(module.split(".")[0], f"{module}.{fn}", exc)
        return None


_NOTED_MISSING: set[str] = set()


def _note_missing(package: str, what: str, exc: BaseException) -> None:
    if package in _NOTED_MISSING:
        return
    _NOTED_MISSING.add(package)
    log.warning("CUDA is available but %s does not import (%s: %s); its operators run their torch forms, "
                "which are much slower (install flashsearch[gpu] for the fused kernels; first missing: %s)",
                package, type(exc).__name__, exc, what)


def refused(dtype: torch.dtype, accepted: tuple[torch.dtype, ...]) -> str:
    """The suffix a recorded torch path gets when a fused kernel is there but refuses `dtype` ("" if accepted)."""
    return "" if dtype in accepted else f"[fused kernel refuses {str(dtype).removeprefix('torch.')}]"


def on_cuda(x: torch.Tensor) -> bool:
    """Whether a fast path may run on x (one predicate, so tests can force it on CPU to check the glue)."""
    return x.is_cuda


# The fused kernels the decode steps call on CUDA (what fla's layers, mamba_ssm's Mamba2.step and vLLM call), and
# the dtypes the fla / mamba_ssm step kernels are handed (they compute in fp32 whatever they get).
CONV_UPDATE = ("causal_conv1d", "causal_conv1d_update")
ADD_RMS_NORM = ("fla.modules.norm.layernorm", "rms_norm")          # residual add + RMSNorm in one kernel (prenorm)
SWIGLU = ("fla.modules.activations", "swiglu")                     # silu(gate) * up in one kernel
CONV_UPDATE_WIDTHS = (2, 3, 4)                                      # what causal_conv1d_update implements
STEP_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)


def step_kernel(module: str, fn: str, x: torch.Tensor, mask: torch.Tensor | None) -> Callable[..., Any] | None:
    """The fused decode-step kernel for x, or None where the torch step runs: no CUDA, the package missing, a dtype
    it is not handed, or a padded step (rows fed a pad keep their state: the torch step's keep_pads)."""
    if mask is not None or not on_cuda(x) or x.dtype not in STEP_DTYPES or torch.is_grad_enabled():
        return None                                                  # (the step kernels have no backward)
    return cuda_kernel(module, fn)


def step_refused(x: torch.Tensor) -> str:
    """The suffix of a torch step's recorded path on CUDA when the step kernels are not handed x's dtype."""
    return refused(x.dtype, STEP_DTYPES) if on_cuda(x) else ""


def write_state(state: Any, **new: torch.Tensor) -> Any:
    """A step's new state tensors. For inference (no grad) written into `state`'s own tensors, which is returned:
    a CUDA graph of the step captures the writes, and nothing is rebuilt. With autograd on (gradients through
    steps, a test's recurrent reference) a new state object instead: an in-place write would clobber a tensor
    the backward needs."""
    if torch.is_grad_enabled():
        return dataclasses.replace(state, **new)
    for name, t in new.items():
        old = getattr(state, name)
        if t is not old:
            old.copy_(t)
    return state


def derived(owner: nn.Module, name: str, params: tuple[torch.Tensor, ...],
            build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`build()` (a tensor computed from `params` only, e.g. stacked weights), cached on `owner` until a param
    changes (data pointer or version), for inference on the fast path: a decode step then launches nothing to
    rebuild it, and a captured CUDA graph reads the cached tensor."""
    key = tuple((p.data_ptr(), -1 if p.is_inference() else p._version, p.dtype) for p in params)
    hit = owner.__dict__.get(name)
    if hit is None or hit[0] != key:
        hit = (key, build())
        owner.__dict__[name] = hit                                   # a plain attribute: not in the state_dict
    return hit[1]


# ---- normalization ---------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned gain (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """Mamba2's output norm: RMSNorm(y * silu(z)) computed per group of `group_size` channels.

    Per-group statistics (mamba_ssm's RMSNormGated with group_size = d_inner / n_groups) keep the groups
    independent, which is what lets tensor parallelism split them.
    """

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = y * F.silu(z)                                               # [..., dim]
        shape = h.shape
        h = h.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        h = F.rms_norm(h, (self.group_size,), None, self.eps).reshape(shape)
        return h * self.weight


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / ||x|| over the last dim (rsqrt form, matches fla's l2norm up to eps placement)."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


# ---- short causal depthwise convolution --------------------------------------------------------------------
def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  cache: torch.Tensor | None = None) -> torch.Tensor:
    """Causal depthwise conv, channels-last. x [B, T, C]; weight [C, 1, K]; cache [B, C, K-1] holds the inputs
    before x (zeros if None). Returns the pre-activation output [B, T, C]; output t sees inputs t-K+1 .. t."""
    B, T, C = x.shape
    k1 = weight.shape[-1] - 1
    xt = x.transpose(1, 2)                                              # [B, C, T]
    # Returned contiguous: the strided [B, T, C] view of the conv output made every later elementwise op (SiLU and
    # its backward, the norms) 2-4x slower on CPU; one copy is cheaper (Mamba2/DeltaNet proxy layers ~5-10%).
    if cache is None:
        # Symmetric padding then keep the first T outputs (F.conv1d has no one-sided padding).
        return F.conv1d(xt, weight, bias, padding=k1, groups=C)[..., :T].transpose(1, 2).contiguous()
    xt = torch.cat([cache.to(x.dtype), xt], dim=-1)                     # [B, C, K-1+T]
    return F.conv1d(xt, weight, bias, groups=C).transpose(1, 2).contiguous()


def conv_cache(x: torch.Tensor, cache: torch.Tensor | None, kernel_size: int) -> torch.Tensor:
    """The conv cache after consuming x [B, T, C]: its last K-1 inputs, [B, C, K-1]."""
    B, T, C = x.shape
    k1 = kernel_size - 1
    prev = cache.to(x.dtype) if cache is not None else x.new_zeros(B, C, k1)
    return torch.cat([prev, x.transpose(1, 2)], dim=-1)[..., T:]


def conv_step(x: torch.Tensor, cache: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: x [B, C], cache [B, C, K-1] -> (pre-activation y [B, C], new cache)."""
    window = torch.cat([cache, x.unsqueeze(-1).to(cache.dtype)], dim=-1)   # [B, C, K]
    y = (window * weight[:, 0]).sum(-1)
    if bias is not None:
        y = y + bias
    return y.to(x.dtype), window[..., 1:]


class ShortConv(nn.Module):
    """Causal depthwise conv module, weight [C, 1, K] (nn.Conv1d's layout, so checkpoints map 1:1)."""

    def __init__(self, channels: int, kernel_size: int, bias: bool):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = K for a depthwise conv.
        bound = 1.0 / math.sqrt(self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """conv(x) after `cache`; with mask [B, T] (padded batch) over each row's real tokens only."""
        if mask is not None:
            return over_real_tokens(lambda xr: causal_conv1d(xr, self.weight, self.bias, cache), x, mask)
        return causal_conv1d(x, self.weight, self.bias, cache)

    def silu(self, x: torch.Tensor, cache: torch.Tensor | None = None, kernel: bool = False,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """SiLU(conv(x)): with kernel=True, from zero history and for fp32 CPU input, the fused compiled kernel."""
        if kernel and cache is None and mask is None and cpu.applies(x, self.weight):
            return cpu.conv_silu(x, self.weight, self.bias)
        return F.silu(self.forward(x, cache, mask))

    def new_cache(self, x: torch.Tensor, cache: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The cache after x: its last K-1 inputs (the last K-1 real ones of each row with a mask)."""
        if mask is not None:
            return conv_cache_real(x, cache, mask, self.kernel_size)
        return conv_cache(x, cache, self.kernel_size)

    def step(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return conv_step(x, cache, self.weight, self.bias)

    def step_silu(self, x: torch.Tensor, cache: torch.Tensor, real: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, str]:
        """SiLU(conv) of one token x [B, C] after cache [B, C, K-1] -> (output, new cache, path); rows with real[b]
        False keep their cache. Without grad the cache is shifted IN PLACE (the new cache is `cache`): on CUDA
        without pads by causal_conv1d_update."""
        fn = None if real is not None or self.kernel_size not in CONV_UPDATE_WIDTHS else step_kernel(*CONV_UPDATE, x,
                                                                                                      None)
        if fn is not None and cache.dtype == x.dtype:
            weight = self.weight.view(self.weight.shape[0], self.kernel_size)
            return fn(x, cache, weight, self.bias, activation="silu"), cache, "causal_conv1d_update"
        y, new = conv_step(x, cache, self.weight, self.bias)
        new = new if real is None else keep_pads(real, new, cache)
        if not torch.is_grad_enabled():
            cache.copy_(new)
            new = cache
        return F.silu(y), new, "torch.conv"


# ---- rotary position embedding ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def rope_inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """RoPE's inverse frequencies [head_dim/2] (fp32), computed once per device: a decode step launches nothing
    for them (and a CUDA graph reads this tensor). Never modify it."""
    return theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)


@functools.lru_cache(maxsize=256)
def arange_cached(n: int, device: torch.device) -> torch.Tensor:
    """torch.arange(n) on device, made once (a decode step's cache-row indices). Never modify it."""
    return torch.arange(n, device=device)


@functools.lru_cache(maxsize=16)
def rope_table(head_dim: int, theta: float, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[length, 2, head_dim]: per position, [cos, cos] and [-sin, sin] (rope_cos_sin's values), so that a decode
    step rotates with one gather and three kernels: x * c + cat(x2, x1) * s (vLLM's cos/sin cache). Never modify."""
    cos, sin = rope_cos_sin(torch.arange(length, device=device), head_dim, theta, dtype)
    return torch.stack([torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)], dim=1)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, head_dim/2] for integer positions [T] (angles in fp32, then cast)."""
    inv_freq = rope_inv_freq(head_dim, float(theta), positions.device)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]     # [T, hd/2]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate halves (Llama / HF convention). x [B, H, T, hd]; cos, sin [T, hd/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# ---- misc ------------------------------------------------------------------------------------------------
def fused_linear(x: torch.Tensor, *linears: nn.Linear) -> list[torch.Tensor]:
    """Apply several bias-free Linears that read the same input, as one GEMM where that costs no copy per call.

    A Linear class may offer `shared_input(x, linears)` to run them as one GEMM where its weights are copied anyway
    (flashsearch.model.fast.Bf16Linear, whose bf16 cast copies them, stacks them into one bf16 GEMM). Inference on
    CUDA (a decode step) stacks plain Linears' weights once and caches them (`stacked_linear`). Otherwise each
    Linear runs on its own: concatenating the weights on every call would be a copy a memory-bound step pays for.
    """
    shared = getattr(type(linears[0]), "shared_input", None) if linears else None  # e.g. the proxy's bf16 GEMM
    fused = shared(x, linears) if shared is not None else None
    if fused is None and len(linears) > 1 and on_cuda(x) and not torch.is_grad_enabled():
        fused = stacked_linear(x, linears)
    return fused if fused is not None else [lin(x) for lin in linears]


def stacked_linear(x: torch.Tensor, linears: tuple[nn.Linear, ...]) -> list[torch.Tensor] | None:
    """Inference on the fast path (a decode step): bias-free nn.Linears that read x as ONE GEMM over their weights
    stacked once and cached (`derived`, rebuilt when a weight changes), as vLLM's merged QKV / gate-up projections.
    None where they do not qualify (biases, subclasses, mixed dtypes)."""
    if any(type(lin) is not nn.Linear or lin.bias is not None for lin in linears):
        return None
    weights = tuple(lin.weight for lin in linears)
    if len({w.dtype for w in weights}) > 1 or weights[0].dtype != x.dtype:
        return None
    stacked = derived(linears[0], "_stacked_weight", weights, lambda: torch.cat(weights, dim=0))
    return list(F.linear(x, stacked).split([w.shape[0] for w in weights], dim=-1))


def adjacent(*parts: torch.Tensor) -> bool:
    """Whether parts are adjacent slices, along the last dim, of one tensor (the outputs of one stacked GEMM)."""
    first = parts[0]
    offset = first.storage_offset()
    if not all(p.shape[:-1] == first.shape[:-1] and p.stride() == first.stride() and p.stride(-1) == 1
               and p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() for p in parts):
        return False
    for p in parts:
        if p.storage_offset() != offset:
            return False
        offset += p.shape[-1]
    return True


def joined(*parts: torch.Tensor) -> torch.Tensor:
    """The concatenation of parts along the last dim: a view when they are `adjacent` (no copy), else torch.cat."""
    first = parts[0]
    if adjacent(*parts):
        return first.as_strided((*first.shape[:-1], sum(p.shape[-1] for p in parts)), first.stride(),
                                first.storage_offset())
    return torch.cat(parts, dim=-1)


def pad_time(x: torch.Tensor, multiple: int, dim: int) -> torch.Tensor:
    """Zero-pad dim `dim` up to a multiple of `multiple` (at the end)."""
    pad = (-x.shape[dim]) % multiple
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def layer_cost(d_model: int, weight_elems: int, state_read: int, state_write: int, flops: float,
               launches: int) -> DecodeCost:
    """DecodeCost of one residual layer: the operator's own work plus the layer's fused add + pre-RMSNorm.

    The pre-norm (one kernel fusing the residual add, D gain elements, ~4 flops/element) is part of every
    layer, so it is counted here once rather than by each predictor.
    """
    return DecodeCost(weight_elems=int(weight_elems + d_model), state_read_elems=int(state_read),
                      state_write_elems=int(state_write), flops=float(flops + 4 * d_model),
                      launches=int(launches + 1))


def outside_autocast(fn: _Fn) -> _Fn:
    """Run a torch-form scan with autocast off: its caller already cast the inputs to the accumulation dtype, and
    autocast (bf16 proxy training) would round its matmuls back to bf16 (CPU has no bf16 triangular solve at all)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", enabled=False), \
                (torch.autocast("cuda", enabled=False) if torch.cuda.is_available() else contextlib.nullcontext()):
            return fn(*args, **kwargs)
    return run  # type: ignore[return-value]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype for recurrent states and scans: at least fp32 (bf16/fp16 states drift), fp64 kept for tests."""
    return torch.promote_types(dtype, torch.float32)


# ---- padded batches ----------------------------------------------------------------------------------------
# A padded batch comes with `mask` [B, T] (bool, True = real token), the attention_mask of Hugging Face. Every
# operator honours it the way flash-linear-attention's and mamba-ssm's variable-length interfaces do: pads add
# nothing to attention and leave recurrent and convolution states as they were, so each row computes what it would
# alone (its outputs at pads are finite but meaningless).
def real_positions(mask: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Per-row position of each token, counting real tokens only, from `start` ([B] or int): [B, T] long. A pad
    gets the position of the real token before it (clamped at 0): finite, and never attended to."""
    start_t = torch.as_tensor(start, device=mask.device).reshape(-1, 1)
    return (start_t + mask.long().cumsum(1) - 1).clamp_min(0)


def real_first(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the time indices of the real tokens (in order) followed by those of the pads: [B, T]."""
    return torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices


def gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, T, C] gathered along time at index [B, T'] -> [B, T', C]."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def over_real_tokens(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """fn applied to each row's real tokens as one contiguous run, mapped back to x's positions.

    For a causal time mixer (a short conv) whatever the padding (left, right or inside): the real tokens are moved
    to the front of each row (pads zeroed, after them), fn runs, and its outputs go back where they came from."""
    order = real_first(mask)
    y = fn(gather_time(x.masked_fill(~mask[..., None], 0), order))
    return gather_time(y, order.argsort(1))


def conv_cache_real(x: torch.Tensor, cache: torch.Tensor | None, mask: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The conv cache after consuming the real tokens of x [B, T, C] (pads skipped): the last K-1 real inputs of each
    row, continuing `cache` [B, C, K-1] (zeros if None)."""
    B, T, C = x.shape
    k1 = kernel_size - 1
    prev = cache.to(x.dtype) if cache is not None else x.new_zeros(B, C, k1)
    run = torch.cat([prev, gather_time(x, real_first(mask)).transpose(1, 2)], dim=-1)   # [B, C, K-1+T]
    last = mask.sum(1, keepdim=True) + torch.arange(k1, device=x.device)               # [B, K-1]: after the cache
    return run.gather(2, last[:, None, :].expand(B, C, k1))


def keep_pads(real: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """A decode step's state: `new` for rows whose token is real (real [B] bool), `old` for rows fed a pad."""
    return torch.where(real.view(-1, *([1] * (new.dim() - 1))), new, old.to(new.dtype))


def zero_pads(mask: torch.Tensor, *zs: torch.Tensor) -> list[torch.Tensor]:
    """Each z [B, T, ...] with its pad positions set to 0 (`where`, not a product: a pad's inf/NaN stays out)."""
    return [torch.where(mask.view(*mask.shape, *([1] * (z.dim() - 2))), z, torch.zeros((), dtype=z.dtype,
                                                                                       device=z.device)) for z in zs]
