"""Measured decode latency: build the genome's HybridLM with random weights and time real decode steps.

CPU: wall clock (time.perf_counter) around the decode loop. CUDA: CUDA events around the same loop, after a
synchronize (a later version captures the step in a CUDA graph). Both: the prompt is consumed by the model's
parallel `prefill` first (not timed), then `workload.decode_tokens` greedy steps are timed, each feeding back the argmax of the previous
logits; the number reported is the median over `repeats` runs, each on a fresh state.

This times the machine it runs on. A GPU name such as "h100" (the workload's target device) is accepted when
torch sees a CUDA device; on a machine without one it is an error that points to the roofline predictor.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def _positive_int(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise FlashsearchError(f"measured.{name} must be an integer >= {minimum}, got {v!r}")
    return v


class MeasuredPredictor:
    """LatencyPredictor that times decoding on this machine.

    device: "cpu", "cuda", "cuda:N", "auto" (CUDA when available), or a GPU name (requires CUDA).
    warmup: untimed decode steps (on a scratch state) before timing. repeats: timed runs; the median is returned.
    threads: torch CPU threads while timing (None: leave as is). max_params: CPU guard against timing models that
    would take hours; dtype: None = fp32 on CPU, bf16 on CUDA.
    """

    def __init__(self, device: str = "cpu", warmup: int = 8, repeats: int = 3, threads: int | None = None,
                 max_params: int = 50_000_000, dtype: str | None = None, seed: int = 0):
        self.warmup = _positive_int("warmup", warmup, 0)
        self.repeats = _positive_int("repeats", repeats)
        self.threads = None if threads is None else _positive_int("threads", threads)
        self.max_params = _positive_int("max_params", max_params)
        self.seed = int(seed)
        self.device = self._resolve_device(str(device))
        if dtype is None:
            self.dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        else:
            key = str(dtype).lower().removeprefix("torch.")
            if key not in _DTYPES:
                raise FlashsearchError(f"measured.dtype {dtype!r} is not one of {', '.join(sorted(_DTYPES))}")
            self.dtype = _DTYPES[key]
        if self.device.type == "cuda":
            self.source = f"measured:cuda:{torch.cuda.get_device_name(self.device)}"
        else:
            self.source = "measured:cpu"

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
                f"repeats={self.repeats}, threads={self.threads})")

    # ---- public API -----------------------------------------------------------------------------------------
    def predict(self, genome: Genome, workload: Workload) -> float:
        """Median seconds to decode workload.decode_tokens tokens after a workload.prompt_len prompt."""
        for name, minimum in (("batch", 1), ("prompt_len", 0), ("decode_tokens", 1)):
            v = getattr(workload, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise FlashsearchError(f"workload.{name} must be an integer >= {minimum}, got {v!r}")
        if self.device.type == "cpu":
            from flashsearch.model import count_parameters

            n = count_parameters(genome)
            if n > self.max_params:
                raise FlashsearchError(
                    f"genome has {n / 1e6:.0f}M parameters, above measured.max_params={self.max_params / 1e6:.0f}M "
                    "for CPU timing; use latency=roofline to predict GPU latency, time a smaller width, "
                    "or raise latency.max_params")
        prev_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            devices = [] if self.device.type == "cpu" else [self.device.index or 0]
            with torch.random.fork_rng(devices=devices):  # random weights must not disturb the caller's RNG
                return self._measure(genome, workload)
        finally:
            torch.set_num_threads(prev_threads)

    # ---- timing -------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _measure(self, genome: Genome, workload: Workload) -> float:
        from flashsearch.model import HybridLM

        torch.manual_seed(self.seed)
        model = HybridLM(genome).to(device=self.device, dtype=self.dtype).eval()
        batch, max_len = workload.batch, workload.prompt_len + workload.decode_tokens + 1
        gen = torch.Generator().manual_seed(self.seed)
        prompt = torch.randint(0, genome.vocab_size, (batch, max(1, workload.prompt_len)), generator=gen)
        prompt = prompt.to(self.device)

        def fresh_state() -> tuple[Any, torch.Tensor]:
            """A state holding the prompt, and the next input token [B, 1] (untimed)."""
            state = model.init_state(batch, max_len, device=self.device, dtype=self.dtype)
            if workload.prompt_len == 0:
                return state, prompt[:, :1]
            logits, state = model.prefill(prompt, state)                  # [B, P, V]
            return state, logits[:, -1:].argmax(-1)

        def decode(state: Any, token: torch.Tensor, n: int) -> None:
            for _ in range(n):
                logits, state = model.step(token, state)
                token = logits.argmax(-1)                                # [B, 1] greedy, stays on device

        if self.warmup:
            decode(*fresh_state(), min(self.warmup, workload.decode_tokens))
        times = []
        for _ in range(self.repeats):
            state, token = fresh_state()
            times.append(self._time(lambda: decode(state, token, workload.decode_tokens)))
        return float(statistics.median(times))

    def _time(self, fn: Any) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
