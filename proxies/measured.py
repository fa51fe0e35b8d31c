"""Measured decode latency: build the genome's HybridLM with random weights and time real decode steps.

Both devices run one code path, a *static-cache decoder* (`StaticDecoder`):

- every per-layer state is preallocated once for prompt + decode_tokens (`HybridLM.init_state`), the prompt is
  consumed by a parallel prefill (untimed, only the last position's logits are formed), then
  `workload.decode_tokens` greedy steps are timed; each step writes its argmax into a static input-id buffer
  that the next step reads, so nothing leaves the device between steps;
- the step is written to be CUDA-graph capturable: recurrent states (Mamba2, DeltaNet, GLA, ...) are computed
  by the operator's own `step` and copied back into the preallocated buffers; attention/SWA layers are stepped
  here (not by `Attention.step`, whose position counter is a Python int that changes slicing shapes every step):
  the position is a device tensor `pos` (incremented inside the step), RoPE angles come from it, the new k/v row
  goes to slot `pos` (`pos % window` for SWA) with `index_copy_`, and the query attends over a fixed number of
  cache rows `kv_len` with a mask `row <= pos`.
- `kv_len` is the only shape that varies with the step. Full attention attends over the first `kv_len` rows,
  rounded up to a multiple of `bucket` (default 256): on CUDA one graph is captured per bucket actually reached
  (8k tokens -> 32 graphs, sharing one memory pool, captured in order and replayed in order) and the host picks
  the graph from its own step counter -- no device->host sync and no `.item()`. Genomes without full attention
  capture a single graph (SWA rows are capped at the window). The masked over-read is < `bucket` rows per
  attention layer, i.e. < 1.6 % of the KV traffic at 8k context with the default bucket.

CUDA: bf16, graphs captured after an eager warm-up on a side stream, timed with CUDA events; if capture fails
the same static step runs eagerly and `source` says so ("measured:cuda-eager:<gpu>", reason in
`capture_error`). CPU: the same static step without graphs (exact `kv_len`, no over-read), wall clock
(`clock="wall"`) or CPU time of the calling thread (`clock="thread"`).

Repeated runs (`repeats`, each on a freshly reset state) give the median and the spread: `measure()` returns a
frozen `LatencyStats` (median, min, max, per-token ms); `predict()` returns the median and keeps the stats in
`last_stats`. `max_batch_throughput()` finds the largest batch that fits in memory (doubling, then bisection,
catching CUDA out-of-memory; bounded by `max_batch`, which is what bounds it on CPU) and returns decoded tokens/s
at that batch (details in `last_throughput`).

This times the machine it runs on. A GPU name such as "h100" (the workload's target device) is accepted when
torch sees a CUDA device; on a machine without one it is an error that points to the roofline predictor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}
_OOM: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, MemoryError)


def _positive_int(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise FlashsearchError(f"measured.{name} must be an integer >= {minimum}, got {v!r}")
    return v


def _check_workload(workload: Workload) -> None:
    for name, minimum in (("batch", 1), ("prompt_len", 0), ("decode_tokens", 1)):
        v = getattr(workload, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise FlashsearchError(f"workload.{name} must be an integer >= {minimum}, got {v!r}")


@dataclass(frozen=True)
class LatencyStats:
    """Seconds to decode `decode_tokens` tokens at `batch`, over `repeats` timed runs."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    decode_tokens: int
    batch: int
    source: str

    @property
    def per_token_ms(self) -> float:
        return self.median_s / self.decode_tokens * 1e3

    @property
    def spread(self) -> float:
        """(max - min) / median."""
        return (self.max_s - self.min_s) / self.median_s if self.median_s > 0 else 0.0


@dataclass(frozen=True)
class ThroughputResult:
    """Decode throughput at the largest batch that fit. limited_by: "memory" (a larger batch ran out of memory)
    or "max_batch" (the search bound was reached without running out)."""

    batch: int
    tokens_per_s: float
    seconds: float                # median seconds to decode decode_tokens tokens at `batch`
    decode_tokens: int
    limited_by: str
    source: str


# ---- the static-cache decoder ----------------------------------------------------------------------------------
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
        from flashsearch.kernels.attention import Attention

        self.model, self.batch, self.max_len = model, batch, max_len
        self.state = model.init_state(batch, max_len, device=device, dtype=dtype)
        self.is_attn = [isinstance(b.op, Attention) for b in model.layers]
        self.attn_rows = max([s.k.shape[2] for s, a in zip(self.state, self.is_attn) if a], default=0)
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)     # static input-id buffer
        self.pos = torch.zeros((), dtype=torch.long, device=device)           # device position counter
        self.rows = torch.arange(max(1, self.attn_rows), device=device)
        self.pos_host = 0                                                     # host copy, never synced

    # ---- untimed --------------------------------------------------------------------------------------------
    def reset(self, prompt: torch.Tensor) -> None:
        """Zero every state, prefill `prompt` [B, P >= 1] in parallel, put its greedy next token in `ids`."""
        for s in self.state:
            for _, t in _state_tensors(s):
                t.zero_()
            if hasattr(s, "pos"):
                s.pos = 0
        m = self.model
        P = prompt.shape[1]
        if P == 0:
            raise FlashsearchError("StaticDecoder.reset needs at least one prompt token")
        if self.model.meta_tokens:
            raise FlashsearchError("measured times HybridLM without meta tokens")
        x = m.embed(prompt)
        work = list(self.state)
        for i, block in enumerate(m.layers):
            x, work[i] = block.prefill(x, work[i])
            _copy_into(self.state[i], work[i])
        self.ids.copy_(m._logits(x[:, -1:]).argmax(-1))
        self.pos.fill_(P)
        self.pos_host = P

    def kv_len(self, bucket: int) -> int:
        """Attended cache rows for the next step: pos + 1 rounded up to `bucket`, capped at the cache size."""
        if self.attn_rows == 0:
            return 0
        need = self.pos_host + 1
        return min(self.attn_rows, -(-need // bucket) * bucket)

    # ---- the step (capturable) ----------------------------------------------------------------------------
    def step(self, kv_len: int) -> None:
        m = self.model
        x = m.embed(self.ids)                                                   # [B, 1, D]
        for block, st, attn in zip(m.layers, self.state, self.is_attn):
            h = block.norm(x)
            if attn:
                y = self._attention_step(block.op, h, st, kv_len)
            else:
                y, new = block.op.step(h, st)
                _copy_into(st, new)
            x = x + y
        self.logits = m._logits(x)                                              # [B, 1, V] (graph output)
        self.ids.copy_(self.logits.argmax(-1))                                  # greedy feedback, on device
        self.pos.add_(1)

    def _attention_step(self, op: Any, x: torch.Tensor, st: Any, kv_len: int) -> torch.Tensor:
        from flashsearch.kernels._common import apply_rope, fused_linear, rope_cos_sin

        B = x.shape[0]
        q, k, v = fused_linear(x, op.q_proj, op.k_proj, op.v_proj)
        q = q.view(B, 1, op.n_heads, op.head_dim).transpose(1, 2)              # [B, H, 1, hd]
        k = k.view(B, 1, op.n_kv_heads, op.head_dim).transpose(1, 2)           # [B, Hkv, 1, hd]
        v = v.view(B, 1, op.n_kv_heads, op.head_dim).transpose(1, 2)
        pos = self.pos.view(1)
        cos, sin = rope_cos_sin(pos, op.head_dim, op.rope_theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rows = st.k.shape[2]
        slot = pos if op.window is None else pos % rows                        # SWA: ring slot
        st.k.index_copy_(2, slot, k)
        st.v.index_copy_(2, slot, v)
        n = min(kv_len, rows)
        mask = (self.rows[:n] <= self.pos).view(1, 1, 1, n)                    # filled rows only
        y = F.scaled_dot_product_attention(q, st.k[:, :, :n], st.v[:, :, :n], attn_mask=mask,
                                           enable_gqa=op.n_heads != op.n_kv_heads)
        return op._out(y)


# ---- the predictor ----------------------------------------------------------------------------------------------
class MeasuredPredictor:
    """LatencyPredictor that times decoding on this machine.

    device: "cpu", "cuda", "cuda:N", "auto" (CUDA when available), or a GPU name (requires CUDA).
    warmup: untimed decode steps before timing. repeats: timed runs (median returned, spread in `last_stats`).
    threads: torch CPU threads while timing (None: leave as is). max_params: CPU guard against timing models that
    would take hours; dtype: None = fp32 on CPU, bf16 on CUDA. cuda_graphs: capture the step in CUDA graphs
    (falls back to eager, stated in `source`). bucket: attended-row granularity of full attention under graphs.
    clock: "wall" or "thread" (CPU time of this thread; CPU only).
    """

    def __init__(self, device: str = "cpu", warmup: int = 8, repeats: int = 3, threads: int | None = None,
                 max_params: int = 50_000_000, dtype: str | None = None, seed: int = 0, cuda_graphs: bool = True,
                 bucket: int = 256, clock: str = "wall"):
        self.warmup = _positive_int("warmup", warmup, 0)
        self.repeats = _positive_int("repeats", repeats)
        self.threads = None if threads is None else _positive_int("threads", threads)
        self.max_params = _positive_int("max_params", max_params)
        self.bucket = _positive_int("bucket", bucket)
        self.seed = int(seed)
        self.cuda_graphs = bool(cuda_graphs)
        if clock not in ("wall", "thread"):
            raise FlashsearchError(f"measured.clock must be 'wall' or 'thread', got {clock!r}")
        self.clock = clock
        self.device = self._resolve_device(str(device))
        if dtype is None:
            self.dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        else:
            key = str(dtype).lower().removeprefix("torch.")
            if key not in _DTYPES:
                raise FlashsearchError(f"measured.dtype {dtype!r} is not one of {', '.join(sorted(_DTYPES))}")
            self.dtype = _DTYPES[key]
        if self.device.type == "cuda":
            self.gpu_name = torch.cuda.get_device_name(self.device)
            self.source = f"measured:cuda:{self.gpu_name}"
        else:
            self.gpu_name = ""
            self.source = "measured:cpu"
        self.capture_error: str | None = None
        self.last_stats: LatencyStats | None = None
        self.last_throughput: ThroughputResult | None = None

    @staticmethod
    def _resolve_device(name: str) -> torch.device:
        key = name.strip().lower()
        has_cuda = torch.cuda.is_available()
        if key == "cpu":
            return torch.device("cpu")
        if key == "auto":
            return torch.device("cuda" if has_cuda else "cpu")
        if not has_cuda:
            raise FlashsearchError(
                f"latency=measured times this machine, but device {name!r} needs CUDA and torch sees no GPU; "
                f"use latency=roofline to predict for {name!r}, or set latency.device=cpu to time on this CPU")
        if key.startswith("cuda"):
            try:
                dev = torch.device(key)
            except RuntimeError:
                raise FlashsearchError(f"measured.device {name!r} is not a valid CUDA device (cuda or cuda:N)") \
                    from None
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise FlashsearchError(f"measured.device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
            return dev
        return torch.device("cuda")  # a target GPU name: time on the local GPU; `source` names the real one

    def __repr__(self) -> str:
        return (f"MeasuredPredictor(device={str(self.device)!r}, dtype={self.dtype}, warmup={self.warmup}, "
                f"repeats={self.repeats}, threads={self.threads}, cuda_graphs={self.cuda_graphs})")

    # ---- public API -----------------------------------------------------------------------------------------
    def predict(self, genome: Genome, workload: Workload) -> float:
        """Median seconds to decode workload.decode_tokens tokens after a workload.prompt_len prompt."""
        return self.measure(genome, workload).median_s

    def measure(self, genome: Genome, workload: Workload) -> LatencyStats:
        """Median, min and max seconds over `repeats` timed decodes (also kept in `last_stats`)."""
        _check_workload(workload)
        self._check_size(genome)
        with self._context():
            model = self._build(genome)
            times = self._time_decode(model, genome, workload, workload.batch)
        self.last_stats = LatencyStats(median_s=float(statistics.median(times)), min_s=float(min(times)),
                                       max_s=float(max(times)), repeats=len(times),
                                       decode_tokens=workload.decode_tokens, batch=workload.batch, source=self.source)
        return self.last_stats

    def max_batch_throughput(self, genome: Genome, workload: Workload, max_batch: int | None = None) -> float:
        """Decoded tokens/s at the largest batch (<= max_batch) whose static decode fits in memory.

        Batch search: 1, 2, 4, ... until a batch runs out of memory or max_batch is reached, then bisection between
        the last fitting and the first failing batch. A batch "fits" when its states for prompt + decode_tokens
        are allocated, its prompt prefilled and a step at the longest attended length runs. The largest fitting
        batch is then timed like `measure` (median of `repeats`). max_batch defaults to 4096 on CUDA and 64 on CPU
        (CPU memory is not probed: the bound is what stops the search). workload.batch is ignored."""
        _check_workload(workload)
        self._check_size(genome)
        if max_batch is None:
            max_batch = 4096 if self.device.type == "cuda" else 64
        max_batch = _positive_int("max_batch", max_batch)
        with self._context():
            model = self._build(genome)
            lo, hi = 0, None                 # lo: largest batch known to fit; hi: smallest known not to fit
            b = 1
            while True:
                if self._fits(model, genome, workload, b):
                    lo = b
                    if b >= max_batch:
                        break
                    b = min(2 * b, max_batch)
                else:
                    hi = b
                    break
            if hi is not None:
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if self._fits(model, genome, workload, mid):
                        lo = mid
                    else:
                        hi = mid
            if lo == 0:
                raise FlashsearchError(f"measured: batch 1 of this genome does not fit in {self.device} memory "
                                       f"for {workload.prompt_len}+{workload.decode_tokens} tokens")
            batch = lo
            while True:                      # graphs need their own memory: step down if timing runs out
                try:
                    times = self._time_decode(model, genome, workload, batch)
                    break
                except _OOM:
                    self._free()
                    if batch == 1:
                        raise
                    hi, batch = batch, max(1, int(batch * 0.9))
        seconds = float(statistics.median(times))
        self.last_throughput = ThroughputResult(
            batch=batch, tokens_per_s=batch * workload.decode_tokens / seconds, seconds=seconds,
            decode_tokens=workload.decode_tokens, limited_by="memory" if hi is not None else "max_batch",
            source=self.source)
        return self.last_throughput.tokens_per_s

    # ---- internals -------------------------------------------------------------------------------------------
    def _check_size(self, genome: Genome) -> None:
        if self.device.type != "cpu":
            return
        from flashsearch.model import count_parameters

        n = count_parameters(genome)
        if n > self.max_params:
            raise FlashsearchError(
                f"genome has {n / 1e6:.0f}M parameters, above measured.max_params={self.max_params / 1e6:.0f}M "
                "for CPU timing; use latency=roofline to predict GPU latency, time a smaller width, "
                "or raise latency.max_params")

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        prev_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            devices = [] if self.device.type == "cpu" else [self.device.index or 0]
            with torch.random.fork_rng(devices=devices), torch.inference_mode():  # caller's RNG undisturbed
                yield
        finally:
            torch.set_num_threads(prev_threads)

    def _build(self, genome: Genome) -> Any:
        from flashsearch.model import HybridLM

        torch.manual_seed(self.seed)
        return HybridLM(genome).to(device=self.device, dtype=self.dtype).eval()

    def _prompt(self, genome: Genome, workload: Workload, batch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        prompt = torch.randint(0, genome.vocab_size, (batch, max(1, workload.prompt_len)), generator=gen)
        return prompt.to(self.device)

    @staticmethod
    def _max_len(workload: Workload) -> int:
        return max(1, workload.prompt_len) + workload.decode_tokens

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _fits(self, model: Any, genome: Genome, workload: Workload, batch: int) -> bool:
        dec = None
        try:
            dec = StaticDecoder(model, batch, self._max_len(workload), self.device, self.dtype)
            dec.reset(self._prompt(genome, workload, batch))
            dec.pos_host = self._max_len(workload) - 1         # worst case: the longest attended length
            dec.step(dec.kv_len(self.bucket))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return True
        except _OOM:
            return False
        finally:
            del dec
            self._free()

    def _time_decode(self, model: Any, genome: Genome, workload: Workload, batch: int) -> list[float]:
        dec = StaticDecoder(model, batch, self._max_len(workload), self.device, self.dtype)
        prompt = self._prompt(genome, workload, batch)
        n = workload.decode_tokens
        bucket = self.bucket if self.device.type == "cuda" else 1
        graphs: dict[int, Any] | None = None
        if self.device.type == "cuda":
            graphs = self._capture(dec, prompt, n) if self.cuda_graphs else None
            mode = "cuda" if graphs is not None else "cuda-eager"
            self.source = f"measured:{mode}:{self.gpu_name}"

        def decode(steps: int) -> None:
            for _ in range(steps):
                kv = dec.kv_len(bucket)
                if graphs is not None:
                    graphs[kv].replay()
                else:
                    dec.step(kv)
                dec.pos_host += 1

        if self.warmup:
            dec.reset(prompt)
            decode(min(self.warmup, n))
        times = []
        for _ in range(self.repeats):
            dec.reset(prompt)
            times.append(self._time(lambda: decode(n)))
        return times  # the decoder and its graphs are freed with this frame

    def _capture(self, dec: StaticDecoder, prompt: torch.Tensor, n: int) -> dict[int, Any] | None:
        """One CUDA graph of `dec.step` per attended-length bucket reached by an n-token decode; None on failure."""
        dec.reset(prompt)
        keys: list[int] = []
        for s in range(n):
            dec.pos_host = prompt.shape[1] + s
            k = dec.kv_len(self.bucket)
            if not keys or keys[-1] != k:
                keys.append(k)
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for k in keys[:1] * 2 + keys:           # eager warm-up: cuBLAS handles, workspaces, kernels
                    dec.pos.fill_(prompt.shape[1])      # stay inside the cache whatever the number of keys
                    dec.step(k)
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            graphs: dict[int, Any] = {}
            pool = None
            for k in keys:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    dec.step(k)
                pool = g.pool() if pool is None else pool
                graphs[k] = g
            torch.cuda.synchronize(self.device)
            self.capture_error = None
            return graphs
        except _OOM:
            raise
        except Exception as e:  # noqa: BLE001 - any capture problem: time eagerly and say so in `source`
            self.capture_error = f"{type(e).__name__}: {e}"
            torch.cuda.synchronize(self.device)
            return None

    def _time(self, fn: Any) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        clock = time.thread_time if self.clock == "thread" else time.perf_counter
        t0 = clock()
        fn()
        return clock() - t0


__all__ = ["LatencyStats", "MeasuredPredictor", "StaticDecoder", "ThroughputResult"]
