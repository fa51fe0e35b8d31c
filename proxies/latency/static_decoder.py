"""The static-cache decoder that measured latency times: greedy batch decoding of a HybridLM with every buffer
preallocated, stepping the real operators (`HybridLM.step`), capturable in CUDA graphs.

- every per-layer state is preallocated once for prompt + decode tokens (`HybridLM.init_state`); `reset` consumes
  the prompt by a parallel prefill (only the last position's logits are formed) and puts its greedy next token
  in the static input-id buffer `ids`;
- `step(kv_len)` runs `HybridLM.step` on `ids`: attention layers write their KV caches in place at their device
  position (`KVCache.pos`) and attend over `kv_len` rows masked to the filled ones (`KVCache.rows`); recurrent
  and conv states (Mamba2, DeltaNet, GLA, ...) are updated in place by the operators' steps (on CUDA by the fused
  kernels themselves), so nothing is rebuilt or copied back (an operator whose step returns new tensors, e.g. a
  plugin's, still gets them copied into the preallocated ones); the logits go to the static buffer `logits` and
  their argmax to `ids`, so nothing leaves the device between steps;
- `kv_len` is the only shape that varies from step to step: the host picks it from its own counter `pos_host`
  (never synced from the device) as pos + 1 rounded up to a bucket, and `capture` records one CUDA graph per
  bucket reached (sharing one memory pool), so a replay of `graphs[kv_len(bucket)]` is one decode step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from flashsearch.errors import FlashsearchError


def _state_tensors(state: Any) -> list[tuple[str, torch.Tensor]]:
    if state is None:
        return []
    if dataclasses.is_dataclass(state):
        return [(f.name, getattr(state, f.name)) for f in dataclasses.fields(state)
                if isinstance(getattr(state, f.name), torch.Tensor)]
    if isinstance(state, torch.Tensor):
        return [("", state)]
    raise FlashsearchError(f"measured: cannot use a decode state of type {type(state).__name__} with static caches")


def _copy_into(static: Any, new: Any) -> None:
    """Write a freshly computed layer state into the preallocated one (same shapes), skipping aliased tensors."""
    if isinstance(static, torch.Tensor):
        if new is not static:
            static.copy_(new)
        return
    for name, t in _state_tensors(static):
        n = getattr(new, name)
        if n is not t:
            t.copy_(n)


class StaticDecoder:
    """Greedy batch decoding with all state preallocated for `max_len` tokens; `step(kv_len)` is capturable."""

    def __init__(self, model: Any, batch: int, max_len: int, device: torch.device, dtype: torch.dtype):
        from flashsearch.kernels.attention import KVCache

        if model.meta_tokens:
            raise FlashsearchError("measured times HybridLM without meta tokens")
        self.model, self.batch, self.max_len = model, batch, max_len
        self.state = model.init_state(batch, max_len, device=device, dtype=dtype)
        self.caches = [s for s in self.state if isinstance(s, KVCache)]
        self.attn_rows = max((c.k.shape[2] for c in self.caches), default=0)
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)                       # static input
        self.logits = torch.zeros(batch, 1, model.genome.vocab_size, dtype=dtype, device=device)  # static output
        self.pos_host = 0                                                     # host count, never synced

    # ---- untimed --------------------------------------------------------------------------------------------
    def reset(self, prompt: torch.Tensor) -> None:
        """Zero every state, prefill `prompt` [B, P >= 1] in parallel, put its greedy next token in `ids`."""
        P = prompt.shape[1]
        if P == 0:
            raise FlashsearchError("StaticDecoder.reset needs at least one prompt token")
        for s in self.state:
            for _, t in _state_tensors(s):
                t.zero_()
        for c in self.caches:
            c.seen, c.rows = 0, None
        m = self.model
        x = m.embed(prompt)
        work = list(self.state)
        for i, block in enumerate(m.layers):
            x, work[i] = block.prefill(x, work[i])
            _copy_into(self.state[i], work[i])
        self.ids.copy_(m._logits(x[:, -1:]).argmax(-1))
        self.pos_host = P

    def kv_len(self, bucket: int) -> int:
        """Attended cache rows for the next step: pos + 1 rounded up to `bucket`, capped at the cache size."""
        if self.attn_rows == 0:
            return 0
        need = self.pos_host + 1
        return min(self.attn_rows, -(-need // bucket) * bucket)

    # ---- the step (capturable) ----------------------------------------------------------------------------
    def step(self, kv_len: int) -> None:
        """One greedy decode step of the real operators over the static buffers; attention reads kv_len rows."""
        for c in self.caches:
            c.rows = kv_len                                                   # capped at each cache's size
        logits, new = self.model.step(self.ids, list(self.state))
        for static, st in zip(self.state, new):
            if st is not static:                                              # built-in operators update in place
                _copy_into(static, st)
        self.logits.copy_(logits)                                             # [B, 1, V]
        self.ids.copy_(self.logits.argmax(-1))                                # greedy feedback, on device

    def capture(self, prompt: torch.Tensor, n: int, bucket: int) -> dict[int, Any]:
        """One CUDA graph of `step` per attended-length bucket reached by an n-token decode after `prompt`,
        captured in order into one memory pool. Raises whatever capture raises. Leaves the state to `reset`."""
        device = self.ids.device
        self.reset(prompt)
        P = prompt.shape[1]
        keys: list[int] = []
        for s in range(n):
            self.pos_host = P + s
            k = self.kv_len(bucket)
            if not keys or keys[-1] != k:
                keys.append(k)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for k in keys[:1] * 2 + keys:               # eager warm-up: cuBLAS handles, workspaces, kernels
                for c in self.caches:                   # stay inside the cache whatever the number of keys
                    c.pos.fill_(P)
                    c.seen = P
                self.step(k)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        graphs: dict[int, Any] = {}
        pool = None
        for k in keys:
            for c in self.caches:
                c.seen = P                              # capture records no host state; keep the room check quiet
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self.step(k)
            pool = g.pool() if pool is None else pool
            graphs[k] = g
        torch.cuda.synchronize(device)
        return graphs


__all__ = ["StaticDecoder"]
