"""The one small interface every operator implements, and what a decode step costs.

An operator maps the residual stream [B, T, D] -> [B, T, D] (the model adds the residual and the pre-norm).
It has two forms that must agree:
  forward(x)          chunked-parallel form for training and prefill (no per-token Python loops);
  step(x_t, state)    recurrent single-token form for decoding, carrying a state (KV cache, SSM state, ...).
`decode_cost` describes one decode step analytically for the roofline latency predictor.

Padded batches: an operator that sets `supports_padding` also takes `mask` [B, T] (bool, True = real token; the
attention_mask of Hugging Face) in forward / prefill / step. Pads, wherever they are in a row, contribute nothing
to attention and leave recurrent and convolution states unchanged, so each row gets the outputs it would get
alone (its outputs at pads are finite and meaningless). mask=None means no pads (and the unchanged fast paths).

A subclass that sets `name` registers itself (flashsearch.operators) with its letter, role, aliases and typed
`Options`, so adding an operator - ours or a user's, in any module - is one file and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn

from flashsearch import operators
from flashsearch.genome import Genome

from . import cpu


@dataclass(frozen=True)
class DecodeCost:
    """Work of ONE decode step of ONE layer at batch 1, with `context` tokens already in the state.

    Element counts (not bytes) so the predictor chooses the dtype. `launches` = GPU kernels per step.
    """

    weight_elems: int            # parameters read once per step
    state_read_elems: int        # KV cache / recurrent state / conv state read per step
    state_write_elems: int       # state written per step (new KV row, updated recurrent state)
    flops: float                 # multiply-adds x 2
    launches: int                # kernels launched per step (fast-path implementation)


@dataclass(frozen=True)
class ProxyScale:
    """How a quality proxy shrinks a genome into the small model it trains (proxies/quality/short_train.py), for
    the operators whose options must shrink with it (Operator.proxy_options)."""

    d_model: int                       # the proxy's width
    head_dim: int                      # the proxy's attention head size
    seq_len: int                       # the proxy's training context
    reference_context: int | None      # the context length-bound options (windows) were chosen for; None: keep them
    state_size: int                    # recurrent state size for state-space operators (e.g. mamba2's d_state)
    state_head_dim: int                # head size for state-space operators (e.g. mamba2's head_dim)


class Operator(nn.Module):
    """Base class of token mixers and the FFN.

    A subclass declares `name`, `letter` (layer-pattern letter), `role` ("mixer" or "ffn"), optional `aliases`
    and a frozen `Options` dataclass (typed fields with defaults, bounds via flashsearch.operators.option); it
    is registered when its class body runs. `self.opts` is the validated Options instance. An operator whose
    options are sized for the full model (a state size, a window) says how a quality proxy shrinks them by
    overriding `proxy_options`.
    """

    name: ClassVar[str] = ""
    letter: ClassVar[str] = ""
    role: ClassVar[str] = "mixer"
    aliases: ClassVar[tuple[str, ...]] = ()
    hf_name: ClassVar[str | None] = None           # name in a Hugging Face config's layer_types (default: name)
    # Whether forward may use the compiled CPU kernels (kernels/cpu.py) for fp32 CPU inputs; set per
    # instance by flashsearch.model.fast.cpu_kernels_ (the proxy's fast path). Operators without them ignore it.
    uses_cpu_kernels: ClassVar[bool] = False       # whether the class has such kernels
    cpu_kernels: bool = False
    # Whether forward / prefill / step take `mask` (padded batches, see the module docstring). The model refuses a
    # padded batch for an operator that does not.
    supports_padding: ClassVar[bool] = False
    # What the last forward / prefill / step ran: a fused kernel ("fla.chunk_gated_delta_rule",
    # "mamba_ssm.selective_state_update+causal_conv1d_update"), a compiled CPU kernel ("cpu_kernel.delta_rule") or a
    # torch form ("torch.chunked", "torch.recurrent"; "torch.chunked[fla refuses float32]" when a fused kernel was
    # there but refused the dtype). Set by every call, so a GPU run on the torch forms shows (`paths_run`).
    last_path: str | None = None

    @dataclass(frozen=True)
    class Options:
        """No options."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:                  # intermediate classes without their own name stay abstract
            operators.register(cls)

    def __init__(self, genome: Genome):
        super().__init__()
        self.opts = self.options_of(genome)

    @classmethod
    def options_of(cls, genome: Genome) -> Any:
        """The genome's op_options.<name> as this operator's validated Options (defaults filled in)."""
        return operators.spec(cls.name).parse_options(genome.options(cls.name))

    @classmethod
    def proxy_options(cls, options: Any, scale: ProxyScale) -> Mapping[str, Any]:
        """Option overrides for the width-scaled copy a quality proxy trains, given the genome's validated Options.
        Default: none (the genome's options stand). Override where an option is sized for the full model, e.g. a
        state size or a window that would dwarf the proxy's width or context."""
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        raise NotImplementedError

    def cpu_kernel_applies(self, *tensors: torch.Tensor) -> bool:
        """Whether forward takes the compiled CPU kernel for these inputs: switched on, and fp32 CPU tensors."""
        return self.cpu_kernels and cpu.applies(*tensors)

    def init_state(self, batch: int, max_len: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Any:
        """Empty decode state for `batch` sequences of up to `max_len` tokens (None if stateless, e.g. FFN)."""
        return None

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:  # x: [B, 1, D]
        raise NotImplementedError

    @classmethod
    def decode_cost(cls, genome: Genome, context: int) -> DecodeCost:
        raise NotImplementedError

    def _ran(self, path: str) -> None:
        """Record the path a call takes (not while torch.compile traces: a traced call records nothing)."""
        if not torch.compiler.is_compiling():
            self.last_path = path


def paths_run(model: nn.Module | Iterable[nn.Module]) -> dict[str, str]:
    """Per operator name, the path(s) its layers last ran (several joined by " | "), from `Operator.last_path`;
    operators not yet called are left out. A trial's `fast_path` metric."""
    modules = model.modules() if isinstance(model, nn.Module) else model
    seen: dict[str, set[str]] = {}
    for m in modules:
        if isinstance(m, Operator) and m.last_path is not None:
            seen.setdefault(m.name, set()).add(m.last_path)
    return {name: " | ".join(sorted(p)) for name, p in sorted(seen.items())}
