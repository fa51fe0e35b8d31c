"""flashsearch.kernels: the token mixers and the FFN, one module per operator, plus a small registry.

Every operator is a `flashsearch.kernels.base.Operator` with a chunked-parallel `forward`, a recurrent
`step` (+ `init_state`, `prefill`) for decoding, and an analytic `decode_cost`. Adding an operator = one new
module and one line in OPERATOR_CLASSES.
"""

from __future__ import annotations

from flashsearch.errors import FlashsearchError
from flashsearch.genome import OPERATORS, Genome, canonical_operator

from .attention import Attention, KVCache, SlidingWindowAttention
from .base import DecodeCost, Operator, resolve_options
from .deltanet import DeltaNet, DeltaNetState, delta_rule_chunked, delta_rule_step
from .ffn import FFN
from .gated_deltanet import GatedDeltaNet, GatedDeltaNetState, gated_delta_rule_chunked, gated_delta_rule_step
from .gla import GLA, GLAState, gla_chunked, gla_step
from .mamba2 import Mamba2, Mamba2State, ssd_chunked, ssd_step

OPERATOR_CLASSES: dict[str, type[Operator]] = {
    cls.name: cls for cls in (Attention, SlidingWindowAttention, Mamba2, DeltaNet, GatedDeltaNet, GLA, FFN)
}


def operator_class(name: str) -> type[Operator]:
    """The class implementing operator `name` (aliases such as 'm2' accepted), or a one-line FlashsearchError."""
    op = canonical_operator(name, where="flashsearch.kernels")
    try:
        return OPERATOR_CLASSES[op]
    except KeyError:
        implemented = ", ".join(OPERATOR_CLASSES)
        raise FlashsearchError(f"operator {op!r} is not implemented yet in flashsearch.kernels; "
                               f"choose one of {implemented}") from None


def build_operator(name: str, genome: Genome) -> Operator:
    """Instantiate operator `name` for `genome` (options validated against the class defaults)."""
    return operator_class(name)(genome)


def decode_cost(genome: Genome, layer_type: str, context: int) -> DecodeCost:
    """Work of one decode step (batch 1) of one `layer_type` layer of `genome` after `context` tokens.

    Includes the layer's fused residual-add + pre-RMSNorm; excludes embedding, final norm and LM head.
    """
    return operator_class(layer_type).decode_cost(genome, context)


__all__ = [
    "OPERATORS", "OPERATOR_CLASSES", "operator_class", "build_operator", "decode_cost", "resolve_options",
    "Operator", "DecodeCost", "Attention", "SlidingWindowAttention", "KVCache", "Mamba2", "Mamba2State",
    "ssd_chunked", "ssd_step", "DeltaNet", "DeltaNetState", "delta_rule_chunked", "delta_rule_step",
    "GatedDeltaNet", "GatedDeltaNetState", "gated_delta_rule_chunked", "gated_delta_rule_step", "GLA", "GLAState",
    "gla_chunked", "gla_step", "FFN",
]
