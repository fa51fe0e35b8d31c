"""Models built from a Genome."""

from typing import Any

from flashsearch.model.hybrid import Block, HybridLM, count_parameters, layer_parameters, weight_normalize_

# The Hugging Face classes load on first access: importing transformers' modeling stack takes seconds, and the
# search workers that train HybridLM never need it.
_HF_EXPORTS = {
    "FlashsearchConfig": "flashsearch.model.hf_config",
    "FlashsearchForCausalLM": "flashsearch.model.hf",
    "FlashsearchCache": "flashsearch.model.hf",
}


def __getattr__(name: str) -> Any:
    if name in _HF_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_HF_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Block", "HybridLM", "count_parameters", "layer_parameters", "weight_normalize_", *_HF_EXPORTS]
