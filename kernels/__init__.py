"""flashsearch.kernels: the token mixers and the FFN, one module per operator.

Every operator is a `flashsearch.kernels.base.Operator` with a chunked-parallel `forward`, a recurrent
`step` (+ `init_state`, `prefill`) for decoding, and an analytic `decode_cost`. Each class declares its name,
letter, role and typed Options and registers itself in flashsearch.operators when defined, so adding an
operator is one new module (here, or anywhere the run's `imports:` names).
"""

from __future__ import annotations

from flashsearch import operators
from flashsearch.genome import Genome

from .base import DecodeCost, Operator

# Import order = registration order = the order operators are listed in (mixers first, then the FFN).
from .attention import Attention, KVCache, SlidingWindowAttention
from .mamba2 import Mamba2, Mamba2State, ssd_chunked, ssd_step
from .deltanet import DeltaNet, DeltaNetState, delta_rule_chunked, delta_rule_step
from .gated_deltanet import GatedDeltaNet, GatedDeltaNetState, gated_delta_rule_chunked, gated_delta_rule_step
from .gla import GLA, GLAState, gla_chunked, gla_step
from .ffn import FFN


def operator_class(name: str) -> type[Operator]:
    """The class implementing operator `name` (letters and aliases such as 'm2' accepted), or a one-line
    FlashsearchError naming the choices."""
    return operators.spec(name, where="flashsearch.kernels").cls


def build_operator(name: str, genome: Genome) -> Operator:
    """Instantiate operator `name` for `genome` (its op_options validated against the operator's Options)."""
    return operator_class(name)(genome)


def decode_cost(genome: Genome, layer_type: str, context: int) -> DecodeCost:
    """Work of one decode step (batch 1) of one `layer_type` layer of `genome` after `context` tokens.

    Includes the layer's fused residual-add + pre-RMSNorm; excludes embedding, final norm and LM head.
    """
    return operator_class(layer_type).decode_cost(genome, context)


__all__ = [
    "operator_class", "build_operator", "decode_cost",
    "Operator", "DecodeCost", "Attention", "SlidingWindowAttention", "KVCache", "Mamba2", "Mamba2State",
    "ssd_chunked", "ssd_step", "DeltaNet", "DeltaNetState", "delta_rule_chunked", "delta_rule_step",
    "GatedDeltaNet", "GatedDeltaNetState", "gated_delta_rule_chunked", "gated_delta_rule_step", "GLA", "GLAState",
    "gla_chunked", "gla_step", "FFN",
]
