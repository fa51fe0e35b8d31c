"""Hugging Face integration: HybridLM as a transformers `PreTrainedModel` with `generate()` support.

    import flashsearch                                   # registers "flashsearch_hybrid" with the Auto classes
    from transformers import AutoConfig, AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder)   # a folder with config.json + model.safetensors
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))  # config only: random init

Design:
- `FlashsearchForCausalLM.model` is the plain HybridLM (the same module the search trains), so checkpoints
  are HybridLM state dicts under a "model." prefix and every operator keeps a single implementation.
- Tied embeddings, the transformers way: `lm_head.weight` is the very Parameter `model.embed.weight`
  (`_tied_weights_keys`), so save_pretrained stores it once and from_pretrained re-ties it. HybridLM computes
  its logits with that same matrix.
- The decode cache is `FlashsearchCache`, a thin holder of HybridLM's per-layer states (KV caches, SSM / delta-rule
  states). transformers 5 `generate()` passes a model's own cache object through untouched as long as the model
  opts out of its default DynamicCache (`_supports_default_dynamic_cache` -> False): the first forward creates the
  cache, returns it, and every later step feeds it back with only the newest token. transformers renamed that
  argument and output field from `past_key_values` to `cache` during 5.x (generate passes `cache=` from 5.24 on),
  so forward accepts both names and fills whichever field the installed output class declares.
- Prompts go through HybridLM.prefill (chunked, parallel); each generated token through HybridLM.step.
- Padded batches: attention_mask (left or right padding, 0 = pad) is honoured by every operator, in forward, prefill
  and decode (kernels/base.py), so batched generate and batched scoring give each row what it gets alone.
  Positions come from the mask (position_ids are not needed and are ignored).
- transformers' model contract: missing tensors of a checkpoint get HybridLM's init, output_hidden_states,
  gradient checkpointing (per Block). Untied embeddings and attention weights are refused with a clear error.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as hf_init
from transformers.modeling_outputs import CausalLMOutputWithPast

from flashsearch.kernels import KVCache, Operator
from flashsearch.kernels._common import RMSNorm
from flashsearch.model.hf_config import ARCHITECTURES, MODEL_TYPE, FlashsearchConfig, hf_layer_type, register_config
from flashsearch.model.hf_config import UNTIED_ERROR
from flashsearch.model.hybrid import INIT_STD, HybridLM

_CAPACITY_STEP = 256  # KV caches grow in multiples of this many tokens (amortizes reallocation while decoding)
# The output field generate() reads the cache back from: "cache" in newer transformers 5.x, "past_key_values" before.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _map_tensors(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply fn to every per-sequence tensor inside one layer's decode state (dataclass, tuple/list, dict, tensor or
    None). 0-dim tensors (a KV cache's device position, shared by the batch) are left as they are."""
    if isinstance(state, torch.Tensor):
        return fn(state) if state.dim() > 0 else state
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(state, **{f.name: _map_tensors(getattr(state, f.name), fn)
                                             for f in dataclasses.fields(state) if f.init})
    if isinstance(state, (list, tuple)):
        return type(state)(_map_tensors(s, fn) for s in state)
    if isinstance(state, dict):
        return {k: _map_tensors(v, fn) for k, v in state.items()}
    return state


class FlashsearchCache:
    """Decode state of a FlashsearchForCausalLM for `batch` sequences: one entry per layer (HybridLM.init_state).

    `seen` counts the tokens consumed (meta tokens excluded). Recurrent states have a fixed size; KV caches are
    preallocated to `capacity` tokens and grown (reallocated and copied) when a forward needs more room.
    `seen` counts the positions of the (padded) batch; with padding, each attention layer also keeps every row's own
    count of real tokens (KVCache.lengths) and recurrent layers skip pads, so rows stay independent.
    """

    is_compileable = False   # read by generate() to decide on torch.compile; our states are plain Python objects
    is_croppable = False     # recurrent states cannot be rolled back token by token

    def __init__(self, states: list[Any], batch: int, capacity: int):
        self.states = states
        self.batch = batch
        self.capacity = capacity
        self.seen = 0

    @classmethod
    def empty(cls, model: HybridLM, batch: int, capacity: int, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> "FlashsearchCache":
        """A fresh cache with room for `capacity` tokens (meta tokens, if any, are already consumed)."""
        return cls(model.init_state(batch, capacity, device, dtype), batch, capacity)

    # ---- what transformers asks of a cache ----------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    @property
    def is_linear(self) -> list[bool]:
        # generate() (5.24) trusts get_seq_length to drop already-cached prompt tokens unless every layer is
        # "linear" (its own linear-attention layers cannot count tokens). `seen` is exact for every layer type,
        # so no layer claims to be linear, even a recurrent one.
        return [False] * len(self.states)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep, for each new row, the state of sequence beam_idx[row]."""
        self.states = [_map_tensors(s, lambda t: t.index_select(0, beam_idx.to(t.device))) for s in self.states]
        self.batch = int(beam_idx.numel())

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.states = [_map_tensors(s, lambda t: t.repeat_interleave(repeats, dim=0)) for s in self.states]
        self.batch *= repeats

    # ---- growth --------------------------------------------------------------------------------------------
    def reserve(self, model: HybridLM, new_tokens: int) -> None:
        """Make room for `new_tokens` more tokens, growing the KV caches geometrically if needed."""
        needed = self.seen + new_tokens
        if needed <= self.capacity:
            return
        capacity = _round_up(max(needed, 2 * self.capacity), _CAPACITY_STEP)
        total = capacity + model.meta_tokens          # KV rows also hold the meta tokens
        for i, block in enumerate(model.layers):
            old = self.states[i]
            # Only attention-style layers keep a per-token cache; recurrent states never grow.
            if not isinstance(old, KVCache):
                continue
            new = block.op.init_state(self.batch, total, old.k.device, old.k.dtype)
            rows = old.k.shape[2]
            if new.k.shape[2] <= rows:                # e.g. a sliding window's ring already at full size
                continue
            # Rows are still in position order here: a ring shorter than its window never wraps (the operator
            # refuses to decode past it), so copying them to the front of the larger buffer keeps every slot valid.
            new.k[:, :, :rows] = old.k
            new.v[:, :, :rows] = old.v
            new.pos.copy_(old.pos)
            new.seen = old.seen
            new.lengths = old.lengths
            self.states[i] = new
        self.capacity = capacity

    def __repr__(self) -> str:
        return f"FlashsearchCache(batch={self.batch}, seen={self.seen}, capacity={self.capacity})"


class FlashsearchPreTrainedModel(PreTrainedModel):
    config_class = FlashsearchConfig
    config: FlashsearchConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _input_embed_layer = "embed"              # HybridLM's embedding attribute (get_input_embeddings finds it)
    _no_split_modules = ["Block"]
    _skip_keys_device_placement = ["past_key_values"]
    supports_gradient_checkpointing = True     # per Block (HybridLM's residual blocks)

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # transformers skips, for code outside its tree ("custom code"), every module whose own tensors are all
        # loaded, because such code may init without its guarded functions. Ours uses only guarded ones
        # (torch.nn.init is patched during loading, transformers.initialization), and HybridLM, its blocks and the
        # FFN own few or no tensors directly: skipped, their missing tensors (the embedding) stayed raw memory.
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialize tensors that nothing loaded (from_pretrained with a partial checkpoint), the way HybridLM
        itself does. transformers' init helpers skip tensors already loaded, and modules are visited children
        first, so operators are filled before HybridLM re-draws their Linear weights with its depth scaling."""
        if isinstance(module, HybridLM):
            module.reset_parameters()               # torch.nn.init is guarded here: loaded tensors are kept
        elif isinstance(module, nn.Embedding):      # e.g. the new rows of resize_token_embeddings
            hf_init.normal_(module.weight, std=INIT_STD)
        elif isinstance(module, Operator):
            missing = [(n, p) for n, p in module.named_parameters() if not getattr(p, "_is_hf_initialized", False)]
            if not missing:
                return
            # Operator-specific tensors (Mamba2's A_log/dt_bias/D, conv weights, norms) keep the operator's own
            # init: take them from a freshly built copy of the operator.
            with torch.device("cpu"):
                fresh = dict(type(module)(self.config.to_genome()).named_parameters())
            for name, param in missing:
                hf_init.copy_(param, fresh[name].to(param.dtype))
        elif isinstance(module, RMSNorm):
            hf_init.ones_(module.weight)


class FlashsearchForCausalLM(FlashsearchPreTrainedModel, GenerationMixin):
    """Causal LM over a flashsearch genome. forward(input_ids, labels=None, past_key_values=None, use_cache=None)
    -> CausalLMOutputWithPast (loss when labels are given, shifted inside as in every transformers causal LM).

    attention_mask (2D, 0 = pad) may pad rows on either side; output_hidden_states returns the embeddings and
    every block's output (the last one after the final norm, as transformers' models do).
    Not supported: inputs_embeds, output_attentions (no operator but attention has attention weights), untied
    embeddings.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed.weight"}
    _is_stateful = True  # recurrent states cannot rewind: no assisted / speculative decoding

    def __init__(self, config: FlashsearchConfig):
        if not config.tie_word_embeddings:          # the config refuses it too; this catches a bypassed setattr
            raise ValueError(UNTIED_ERROR)
        super().__init__(config)
        self.model = HybridLM(config.to_genome(), meta_tokens=int(config.meta_tokens))
        # Storage comes from the tie in post_init (it becomes model.embed.weight): no vocab x hidden allocation.
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device="meta")
        # HybridLM initialized itself (depth-scaled residual writers, operator-specific inits): flag its tensors so
        # post_init's generic initialization keeps them, then drop the flags, because from_pretrained reads them
        # as "loaded" and would otherwise neither report nor initialize tensors missing from a checkpoint.
        own = list(self.model.parameters())
        for p in own:
            p._is_hf_initialized = True
        self.post_init()
        for p in own:
            del p._is_hf_initialized

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # Tells generate() not to build a transformers DynamicCache: forward creates a FlashsearchCache itself.
        return False

    def new_cache(self, batch_size: int, max_length: int = _CAPACITY_STEP) -> FlashsearchCache:
        """An empty decode cache sized for `max_length` tokens (it grows beyond that if needed)."""
        ref = self.model.embed.weight
        return FlashsearchCache.empty(self.model, batch_size, max(1, int(max_length)), ref.device, ref.dtype)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: FlashsearchCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: FlashsearchCache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids [B, T] -> logits [B, T, V]. With a cache (given, or created when use_cache), the tokens continue
        the cached sequences: T > 1 is a parallel prefill, T == 1 one recurrent decode step. `cache` and
        `past_key_values` are two names for the same argument (transformers' newer and older one).
        attention_mask [B, T] (or [B, cached + T]: its last T columns are used) marks pads with 0. position_ids are
        not needed (positions come from the cache and the mask) and are ignored. use_cache defaults to
        config.use_cache in eval mode and to False in training."""
        if inputs_embeds is not None:
            raise ValueError("FlashsearchForCausalLM takes input_ids only; inputs_embeds is not supported")
        if input_ids is None:
            raise ValueError("FlashsearchForCausalLM.forward needs input_ids [batch, seq_len]")
        if output_attentions if output_attentions is not None else self.config.output_attentions:
            raise ValueError("output_attentions is not supported: flashsearch models mix tokens with recurrent "
                             "operators that have no attention weights")
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        batch, seq_len = input_ids.shape
        mask = None
        if attention_mask is not None:
            if attention_mask.ndim != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] < seq_len:
                raise ValueError(f"attention_mask must be [batch, tokens] with at least the {seq_len} tokens of "
                                 f"input_ids, got shape {tuple(attention_mask.shape)}")
            mask = attention_mask[:, -seq_len:]     # pads already consumed are in the cache's states
        if use_cache is None:
            use_cache = bool(self.config.use_cache) and not self.training
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the decode cache once, as `cache` or as `past_key_values`, not two different ones")
        # Whichever name the caller used (generate() passes `cache` from transformers 5.24 on): a cache it hands in
        # must be the one this forward continues, or every step would restart from an empty state.
        past_key_values = cache if cache is not None else past_key_values
        if past_key_values is not None and not isinstance(past_key_values, FlashsearchCache):
            raise TypeError(f"the cache must be a FlashsearchCache (from model.new_cache or a previous "
                            f"forward), got {type(past_key_values).__name__}")
        if past_key_values is None and use_cache:
            past_key_values = self.new_cache(batch, _round_up(seq_len + 1, _CAPACITY_STEP))

        hidden: list[torch.Tensor] | None = [] if output_hidden_states else None
        if past_key_values is None:
            logits = self.model(input_ids, mask, hidden_states=hidden)             # [B, T, V]
        else:
            if past_key_values.batch != batch:
                raise ValueError(f"input_ids has batch {batch} but the cache holds {past_key_values.batch} sequences")
            cache = past_key_values
            cache.reserve(self.model, seq_len)
            decode = self.model.step if seq_len == 1 else self.model.prefill
            logits, cache.states = decode(input_ids, cache.states, mask, hidden_states=hidden)
            cache.seen += seq_len
        if hidden:
            hidden[-1] = self.model.norm(hidden[-1])           # transformers' convention: the last one is normed

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=None if hidden is None else tuple(hidden),
                                     **{_CACHE_FIELD: past_key_values})
        if return_dict is None:
            return_dict = self.config.return_dict
        return out if return_dict else out.to_tuple()


def register() -> None:
    """Register FlashsearchConfig / FlashsearchForCausalLM with AutoConfig / AutoModelForCausalLM (idempotent).
    `import flashsearch` does this automatically when transformers loads its Auto classes."""
    from transformers.models.auto.modeling_auto import AutoModelForCausalLM

    register_config()
    AutoModelForCausalLM.register(FlashsearchConfig, FlashsearchForCausalLM, exist_ok=True)


__all__ = ["FlashsearchConfig", "FlashsearchForCausalLM", "FlashsearchPreTrainedModel", "FlashsearchCache",
           "MODEL_TYPE", "ARCHITECTURES", "hf_layer_type", "register"]
