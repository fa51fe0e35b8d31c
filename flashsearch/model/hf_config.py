"""FlashsearchConfig: a Genome as a Hugging Face `PreTrainedConfig` (model_type "flashsearch_hybrid").

Kept apart from flashsearch.model.hf on purpose: this module needs only `transformers.configuration_utils`,
so `AutoConfig` can be taught our model type while transformers is still importing its modeling stack
(flashsearch/__init__.py registers it from an import hook; importing modeling code there would be circular).

The fields speak transformers' language (hidden_size, num_attention_heads, num_key_value_heads, head_dim,
intermediate_size, vocab_size, layer_types, num_hidden_layers, tie_word_embeddings) plus the three things a
Genome needs beyond them: ffn_ratio (intermediate_size is rounded), op_options, meta_tokens.
Layer types use transformers' own names where one exists ("full_attention", "sliding_attention": each operator's
`hf_name` in flashsearch.operators); every other operator keeps its flashsearch name ("mamba2", "deltanet", ...).
"""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from flashsearch import operators
from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome, canonical_operator

MODEL_TYPE = "flashsearch_hybrid"
ARCHITECTURES = ["FlashsearchForCausalLM"]

# A small but complete default (Flash-1B's first block), so FlashsearchConfig() is a valid config, as
# transformers expects of every config class.
_DEFAULT_LAYERS = ("deltanet", "ffn", "mamba2", "ffn", "attention", "ffn")
UNTIED_ERROR = ("tie_word_embeddings=False is not supported: HybridLM's LM head is its embedding matrix "
                "(untied embeddings are not implemented)")


def hf_layer_type(op: str) -> str:
    """Operator name (or alias) -> its name in a Hugging Face config's layer_types. Genome accepts both
    spellings, and transformers itself rewrites a bare "attention" to "full_attention" when a config is built."""
    return operators.spec(op).hf_name


@strict  # re-collects the validate_* methods, so our validate_layer_type replaces transformers' own
class FlashsearchConfig(PreTrainedConfig):
    """Hugging Face config of a flashsearch HybridLM; `to_genome()` / `from_genome()` convert losslessly.

    Derived fields may be omitted: num_hidden_layers = len(layer_types), head_dim = hidden_size //
    num_attention_heads, num_key_value_heads = num_attention_heads, ffn_ratio = intermediate_size / hidden_size
    (3.0 if neither is given), intermediate_size = round(ffn_ratio * hidden_size). When given they must agree.
    Embeddings are always tied (HybridLM's LM head is its embedding matrix).
    """

    model_type = MODEL_TYPE
    # Output keys Trainer.predict drops: the decode cache is "cache" in transformers 5.24+, "past_key_values" before.
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    layer_types: list[str] | None = None
    hidden_size: int = 256
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    ffn_ratio: int | float | None = None
    vocab_size: int = 131072
    num_hidden_layers: int | None = None
    tie_word_embeddings: bool = True
    op_options: dict[str, dict[str, Any]] | None = None
    meta_tokens: int = 0
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"invalid {type(self).__name__}: {msg}")

        try:
            layers = [hf_layer_type(t) for t in (self.layer_types or _DEFAULT_LAYERS)]
        except FlashsearchError as e:
            raise bad(str(e)) from None
        if self.num_hidden_layers is not None and self.num_hidden_layers != len(layers):
            raise bad(f"num_hidden_layers={self.num_hidden_layers} but layer_types has {len(layers)} entries; "
                      "drop num_hidden_layers (it is derived) or make them agree")
        if not self.tie_word_embeddings:
            raise bad(UNTIED_ERROR)
        self.layer_types = layers
        self.num_hidden_layers = len(layers)
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.ffn_ratio is None:
            self.ffn_ratio = 3.0 if self.intermediate_size is None else self.intermediate_size / self.hidden_size
        self.ffn_ratio = float(self.ffn_ratio)
        # JSON has no tuples and no read-only mappings: store plain nested dicts (what save_pretrained writes).
        self.op_options = json.loads(json.dumps({k: dict(v) for k, v in (self.op_options or {}).items()}))
        try:
            genome = self.to_genome()                     # full validation, with the Genome's one-line errors
        except FlashsearchError as e:
            raise bad(str(e)) from None
        if self.intermediate_size is not None and self.intermediate_size != genome.ffn_hidden:
            raise bad(f"intermediate_size={self.intermediate_size} disagrees with ffn_ratio={self.ffn_ratio} x "
                      f"hidden_size={self.hidden_size} = {genome.ffn_hidden}; give only one of them")
        self.intermediate_size = genome.ffn_hidden
        if isinstance(self.meta_tokens, bool) or not isinstance(self.meta_tokens, int) or self.meta_tokens < 0:
            raise bad(f"meta_tokens must be a non-negative integer, got {self.meta_tokens!r}")
        super().__post_init__(**kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        # Refused at once, not when a model is built from the config: untying would leave no LM head to save.
        if name == "tie_word_embeddings" and not value:
            raise ValueError(f"invalid {type(self).__name__}: {UNTIED_ERROR}")
        super().__setattr__(name, value)

    def validate_layer_type(self) -> None:
        """transformers only knows its own layer-type names (full_attention, linear_attention, ...); ours name
        the exact operator of each layer, so check them against flashsearch's operator list instead."""
        try:
            for t in self.layer_types or ():
                canonical_operator(t)
        except FlashsearchError as e:
            raise ValueError(str(e)) from None
        if self.num_hidden_layers != len(self.layer_types or ()):
            raise ValueError(f"num_hidden_layers={self.num_hidden_layers} must equal len(layer_types)="
                             f"{len(self.layer_types or ())}")

    # ---- Genome <-> config -----------------------------------------------------------------------------------
    def to_genome(self) -> Genome:
        """The Genome this config describes (layer names canonicalized, e.g. full_attention -> attention)."""
        return Genome(layer_types=tuple(self.layer_types), d_model=int(self.hidden_size),
                      n_heads=int(self.num_attention_heads), n_kv_heads=int(self.num_key_value_heads),
                      head_dim=int(self.head_dim), ffn_ratio=float(self.ffn_ratio), vocab_size=int(self.vocab_size),
                      op_options=dict(self.op_options or {}))

    @classmethod
    def from_genome(cls, genome: Genome, meta_tokens: int = 0, **kwargs: Any) -> "FlashsearchConfig":
        """Config for `genome`; extra kwargs (bos_token_id, name_or_path, metadata...) go to the config."""
        g = genome.to_dict()
        return cls(layer_types=list(genome.layer_types), hidden_size=genome.d_model,
                   num_attention_heads=genome.n_heads, num_key_value_heads=genome.n_kv_heads,
                   head_dim=genome.head_dim, intermediate_size=genome.ffn_hidden, ffn_ratio=genome.ffn_ratio,
                   vocab_size=genome.vocab_size, num_hidden_layers=genome.n_layers, tie_word_embeddings=True,
                   op_options=g["op_options"], meta_tokens=meta_tokens,
                   architectures=list(ARCHITECTURES), **kwargs)


def register_config() -> None:
    """Teach AutoConfig the "flashsearch_hybrid" model type (idempotent)."""
    from transformers.models.auto.configuration_auto import AutoConfig

    AutoConfig.register(MODEL_TYPE, FlashsearchConfig, exist_ok=True)


__all__ = ["FlashsearchConfig", "MODEL_TYPE", "ARCHITECTURES", "UNTIED_ERROR", "hf_layer_type", "register_config"]
