"""HybridLM: a decoder-only language model built from a Genome's layer list.

embed (tied with the LM head) -> [optional meta tokens prepended] -> for each layer_type: x + op(RMSNorm(x))
-> final RMSNorm -> logits. Training uses each operator's chunked `forward`; decoding uses `step` with
per-layer states, and `prefill` for a whole prompt.

Padded batches: forward / prefill / step take `mask` [B, T] (True or 1 = real token; Hugging Face's
attention_mask for the tokens given) and every operator honours it (kernels/base.py), so each row's logits at
its real tokens are the ones it gets alone. Pads may sit anywhere (left, right, between decode steps).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.kernels import Operator, build_operator
from flashsearch.kernels._common import ADD_RMS_NORM, RMSNorm, step_kernel

INIT_STD = 0.02


def _mask_kw(op: Operator, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The keyword an operator call gets for a padded batch (none without pads, so any operator runs unpadded)."""
    if mask is None:
        return {}
    if not op.supports_padding:
        raise FlashsearchError(f"operator {op.name!r} does not support padded batches (zeros in attention_mask); "
                               "pass equal-length sequences, or set supports_padding and take `mask` in it")
    return {"mask": mask}


class Block(nn.Module):
    """Pre-norm residual block: x + op(norm(x)).

    `gradient_checkpointing` (set by transformers' gradient_checkpointing_enable, with `_gradient_checkpointing_func`)
    recomputes the block in the backward pass instead of keeping its activations."""

    gradient_checkpointing = False

    def __init__(self, op: Operator, d_model: int):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.op = op

    def _forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return x + self.op(self.norm(x), **_mask_kw(self.op, mask))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(self._forward, x, mask)
        return self._forward(x, mask)

    def step(self, x: torch.Tensor, state: Any, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        y, state = self.op.step(self.norm(x), state, **_mask_kw(self.op, mask))
        return x + y, state

    def step_fused(self, h: torch.Tensor, residual: torch.Tensor, state: Any, next_norm: RMSNorm,
                   add_norm: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """HybridLM's CUDA step: this block's operator on its normed input h, then its residual add fused with
        the next norm (add_norm: fla's rms_norm with prenorm) -> (next normed input, residual stream, state)."""
        y, state = self.op.step(h, state)
        h, residual = add_norm(y, next_norm.weight, None, residual=residual, eps=next_norm.eps, prenorm=True)
        return h, residual, state

    def prefill(self, x: torch.Tensor, state: Any, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        op_prefill = getattr(self.op, "prefill", None)
        h = self.norm(x)
        if op_prefill is not None:
            y, state = op_prefill(h, state, **_mask_kw(self.op, mask))
        else:  # operators without a parallel prefill fall back to stepping (correct, just slower)
            ys = []
            for t in range(h.shape[1]):
                kw = _mask_kw(self.op, None if mask is None else mask[:, t:t + 1])
                yt, state = self.op.step(h[:, t:t + 1], state, **kw)
                ys.append(yt)
            y = torch.cat(ys, dim=1)
        return x + y, state


class HybridLM(nn.Module):
    """Language model for one genome. meta_tokens > 0 prepends that many learned vectors to every sequence."""

    def __init__(self, genome: Genome, meta_tokens: int = 0):
        super().__init__()
        if isinstance(meta_tokens, bool) or not isinstance(meta_tokens, int) or meta_tokens < 0:
            raise FlashsearchError(f"meta_tokens must be a non-negative integer, got {meta_tokens!r}")
        self.genome = genome
        self.meta_tokens = meta_tokens
        d = genome.d_model
        self.embed = nn.Embedding(genome.vocab_size, d)
        self.meta = nn.Parameter(torch.zeros(meta_tokens, d)) if meta_tokens else None
        self.layers = nn.ModuleList(Block(build_operator(t, genome), d) for t in genome.layer_types)
        self.norm = RMSNorm(d)
        self.reset_parameters()

    # ---- init ------------------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """normal(0, 0.02) for embeddings and linears; residual writers get 0.02 / sqrt(number of residual
        writes) (GPT-2's scheme: its 2 writes per layer are our 2 blocks) so the residual stream's variance does
        not grow with depth. Operator-specific parameters (Mamba2's A_log, dt_bias, D; conv weights; norm gains)
        keep the operator's own init."""
        nn.init.normal_(self.embed.weight, std=INIT_STD)
        if self.meta is not None:
            nn.init.normal_(self.meta, std=INIT_STD)
        writer_std = INIT_STD / math.sqrt(len(self.layers))
        for block in self.layers:
            op = block.op
            writers = set(getattr(op, "writers", ()))
            for name, module in op.named_children():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=writer_std if name in writers else INIT_STD)

    # ---- training / scoring ------------------------------------------------------------------------------
    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)                                               # [B, T, D]
        if self.meta is not None:
            x = torch.cat([self.meta.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)  # [B, M+T, D]
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(x), self.embed.weight)                       # tied LM head: [B, T, V]

    def _mask(self, mask: torch.Tensor | None, meta: bool) -> torch.Tensor | None:
        """mask [B, T] (any dtype, nonzero = real) as bool, with the meta tokens in front when `meta`; None when
        there is no pad (the operators' unpadded paths)."""
        if mask is None:
            return None
        mask = mask.bool()
        if bool(mask.all()):
            return None
        if meta and self.meta_tokens:
            mask = torch.cat([mask.new_ones(mask.shape[0], self.meta_tokens), mask], dim=1)
        return mask

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None,
                hidden_states: list[torch.Tensor] | None = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, V] (meta-token positions are dropped). mask [B, T]: padded batch.
        hidden_states: a list that receives the embeddings and each block's output, [B, T, D] each."""
        x = self._embed(input_ids)
        mask = self._mask(mask, meta=True)
        if hidden_states is not None:
            hidden_states.append(x[:, self.meta_tokens:])
        for block in self.layers:
            x = block(x, mask)
            if hidden_states is not None:
                hidden_states.append(x[:, self.meta_tokens:])
        return self._logits(x[:, self.meta_tokens:])

    # ---- decoding --------------------------------------------------------------------------------------------
    def init_state(self, batch: int, max_len: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> list[Any]:
        """Per-layer decode states for `batch` sequences of up to `max_len` tokens (meta tokens not counted:
        they are prefilled here, so the first `step` continues after them exactly as `forward` does)."""
        ref = self.embed.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        state = [b.op.init_state(batch, max_len + self.meta_tokens, device, dtype) for b in self.layers]
        if self.meta is not None:
            x = self.meta.to(device=device, dtype=dtype).expand(batch, -1, -1)
            with torch.no_grad():
                for i, block in enumerate(self.layers):
                    x, state[i] = block.prefill(x, state[i])
        return state

    def prefill(self, input_ids: torch.Tensor, state: list[Any], mask: torch.Tensor | None = None,
                hidden_states: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[Any]]:
        """Consume a prompt input_ids [B, T] in parallel, continuing from `state` -> (logits [B, T, V], state).
        mask [B, T]: padded batch (pads leave the state as it was). hidden_states: as in forward."""
        x = self.embed(input_ids)
        mask = self._mask(mask, meta=False)
        if hidden_states is not None:
            hidden_states.append(x)
        for i, block in enumerate(self.layers):
            x, state[i] = block.prefill(x, state[i], mask)
            if hidden_states is not None:
                hidden_states.append(x)
        return self._logits(x), state

    def step(self, input_ids: torch.Tensor, state: list[Any], mask: torch.Tensor | None = None,
             hidden_states: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[Any]]:
        """One decode step: input_ids [B, 1] -> (logits [B, 1, V], state). For inference (run under
        torch.no_grad()): KV caches are written in place. mask [B, 1]: rows fed a pad keep their state."""
        x = self.embed(input_ids)                                               # [B, 1, D]
        mask = self._mask(mask, meta=False)
        add_norm = None if hidden_states is not None else step_kernel(*ADD_RMS_NORM, x, mask)
        if add_norm is not None:
            return self._step_fused_norms(x, state, add_norm)
        if hidden_states is not None:
            hidden_states.append(x)
        for i, block in enumerate(self.layers):
            x, state[i] = block.step(x, state[i], mask)
            if hidden_states is not None:
                hidden_states.append(x)
        return self._logits(x), state

    def _step_fused_norms(self, x: torch.Tensor, state: list[Any], add_norm: Any) -> tuple[torch.Tensor, list[Any]]:
        """step on CUDA: each layer's residual add and the next pre-norm (the final norm last) are one kernel,
        fla's rms_norm with a residual (prenorm=True returns the normed output and the sum), as fla's and vLLM's
        decoders do and as the roofline charges (one fused add + norm per layer)."""
        h, residual = add_norm(x, self.layers[0].norm.weight, None, eps=self.layers[0].norm.eps, prenorm=True)
        for i, block in enumerate(self.layers):
            norm = self.layers[i + 1].norm if i + 1 < len(self.layers) else self.norm
            h, residual, state[i] = block.step_fused(h, residual, state[i], norm, add_norm)
        return F.linear(h, self.embed.weight), state                          # tied LM head: [B, 1, V]


# ---- training recipe -------------------------------------------------------------------------------------------
@torch.no_grad()
def weight_normalize_(model: nn.Module, eps: float = 1e-8) -> nn.Module:
    """Nemotron-Flash weight normalization, applied after every optimizer step (in place).

    Rows of matrices that read the hidden stream (an operator's `readers`: q/k/v, in_proj, FFN gate/up) and
    columns of matrices that write into the residual (`writers`: o_proj, out_proj, FFN down) get unit L2 norm.
    A Linear's weight is [out, in]: a row (dim 1) is one output's read direction, a column (dim 0) is the
    direction one input writes into the residual. Works on any module containing operators.
    """
    for module in model.modules():
        if not isinstance(module, Operator):
            continue
        for names, dim in ((getattr(module, "readers", ()), 1), (getattr(module, "writers", ()), 0)):
            for name in names:
                w = getattr(module, name).weight
                w.div_(w.norm(dim=dim, keepdim=True).clamp_min(eps))
    return model


def _build_meta(genome: Genome, meta_tokens: int) -> HybridLM:
    # On the meta device nothing is allocated or initialised for real, so a 1B model "builds" in milliseconds.
    with torch.device("meta"):
        return HybridLM(genome, meta_tokens=meta_tokens)


def count_parameters(genome: Genome, meta_tokens: int = 0) -> int:
    """Exact parameter count of HybridLM(genome) (tied embedding counted once), without allocating it."""
    return sum(p.numel() for p in _build_meta(genome, meta_tokens).parameters())


def layer_parameters(genome: Genome) -> list[int]:
    """Parameters of each layer (its operator plus its pre-norm gain), in layer order."""
    model = _build_meta(genome, 0)
    return [sum(p.numel() for p in block.parameters()) for block in model.layers]
