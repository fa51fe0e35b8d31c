"""Models built from a Genome."""

from flashsearch.model.hybrid import Block, HybridLM, count_parameters, layer_parameters, weight_normalize_

__all__ = ["Block", "HybridLM", "count_parameters", "layer_parameters", "weight_normalize_"]
