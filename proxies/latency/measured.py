"""Measured decode latency: build the genome's HybridLM with random weights and time real decode steps.

Both devices run one code path, the static-cache decoder (static_decoder.py): states preallocated for prompt +
decode_tokens, the prompt prefilled untimed, then `workload.decode_tokens` greedy steps of the real operators
(`HybridLM.step`, attention included) timed; each step feeds its argmax to the next on the device.

Full attention attends over the filled cache rows rounded up to a multiple of `bucket` (default 256): on CUDA
one graph is captured per bucket actually reached (8k tokens -> 32 graphs, one memory pool, replayed in order)
and the host picks the graph from its own step counter -- no device->host sync and no `.item()`. Genomes
without full attention capture a single graph (SWA rows are capped at the window). The masked over-read is
< `bucket` rows per attention layer, i.e. < 1.6 % of the KV traffic at 8k context with the default bucket.

CUDA: bf16, graphs captured after an eager warm-up on a side stream, timed with CUDA events; if capture fails
the same static step runs eagerly and `source` says so ("measured:cuda-eager:<gpu>", reason in
`capture_error`). CPU: the same static step without graphs (exact row count, no over-read), wall clock
(`clock="wall"`) or CPU time of the calling thread (`clock="thread"`).

Repeated runs (`repeats`, each on a freshly reset state) give the median and the spread: `measure()` returns a
frozen `LatencyStats` (median, min, max, per-token ms); `predict()` returns the median and keeps the stats in
`last_stats`. `max_batch_throughput()` (throughput.py) finds the largest batch that fits in memory and returns
decoded tokens/s at that batch (details in `last_throughput`).

Safe batch search on CUDA. Some kernels index with int32 offsets: mamba-ssm's SSD kernels compute
`pid_b * stride_batch` in int32 (ssd_chunk_state.py ~263), so a prefill of batch x (chunks x d_inner x d_state
elements, or prompt x in_proj width) >= 2^31 elements wraps around and writes out of bounds: an illegal memory
access, after which the process's CUDA context is unusable. The search therefore never probes a batch above
`int32_batch_limit` (the cap and why: `batch_cap`), a probe that fails with an overflow-class error counts as not
fitting, and one that leaves the context broken (illegal memory access, device-side assert) stops the
measurement with one clear error instead of returning garbage for every later probe. With `isolate_probes=True`
each probe runs in a child process (`python -m flashsearch.proxies.latency.measured probe ...`): a probe that
crashes or breaks its own CUDA context then only counts as not fitting (the reason in `probe_errors`), and the
search goes on in a clean parent; each probe pays a process start and a model build.

This times the machine it runs on. A GPU name such as "h100" (the workload's target device) is accepted when
torch sees a CUDA device; on a machine without one it is an error that points to the roofline predictor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload

from .static_decoder import StaticDecoder

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}
_OOM: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, MemoryError)
INT32_MAX = 2**31 - 1
# Messages of errors that leave a CUDA context unusable (every later CUDA call fails too).
_CONTEXT_LOST = ("illegal memory access", "device-side assert", "unspecified launch failure", "misaligned address",
                 "illegal instruction")
# Messages of size-limit errors raised before anything runs (the context is fine).
_SIZE_LIMIT = ("overflow", "int32", "2**31", "2^31", "out of range", "too large")


def int32_batch_limit(genome: Genome, prompt_len: int) -> int | None:
    """Largest batch whose prefill stays inside the int32 element offsets of the kernels that use them (mamba-ssm's
    SSD and selective_state_update kernels, for every Mamba2 layer); None when the genome has none.

    Per sequence the largest tensor those kernels index is either the chunk states (ceil(prompt / chunk) x d_inner x
    d_state) or a slice of the in_proj output (prompt x (2 d_inner + 2 groups x d_state + heads)); batch x that
    must stay below 2^31 (offsets count elements, not bytes)."""
    from flashsearch import kernels
    from flashsearch.kernels.mamba2 import Mamba2

    strides = []
    length = max(1, prompt_len)
    for op in dict.fromkeys(genome.layer_types):
        cls = kernels.operator_class(op)
        if not issubclass(cls, Mamba2):
            continue
        m = cls.dims(genome)
        chunks = -(-length // m["chunk_size"])
        strides.append(max(chunks * m["d_inner"] * m["d_state"],
                           length * (2 * m["d_inner"] + 2 * m["n_groups"] * m["d_state"] + m["n_heads"])))
    return INT32_MAX // max(strides) if strides else None


def _error_class(exc: BaseException) -> str | None:
    """"context-lost", "size-limit" or None (another error) for an exception from a probe."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if any(s in text for s in _CONTEXT_LOST):
        return "context-lost"
    if any(s in text for s in _SIZE_LIMIT):
        return "size-limit"
    return None


def _positive_int(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise FlashsearchError(f"measured.{name} must be an integer >= {minimum}, got {v!r}")
    return v


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


# ---- the predictor ----------------------------------------------------------------------------------------------
class MeasuredPredictor:
    """LatencyPredictor that times decoding on this machine.

    device: "cpu", "cuda", "cuda:N", "auto" (CUDA when available), or a GPU name (requires CUDA).
    warmup: untimed decode steps before timing. repeats: timed runs (median returned, spread in `last_stats`).
    threads: torch CPU threads while timing (None: leave as is). max_params: CPU guard against timing models that
    would take hours; dtype: None = fp32 on CPU, bf16 on CUDA. cuda_graphs: capture the step in CUDA graphs
    (falls back to eager, stated in `source`). bucket: attended-row granularity of full attention under graphs.
    clock: "wall" or "thread" (CPU time of this thread; CPU only). isolate_probes: run each batch-search probe
    in a child process (see the module docstring).
    """

    def __init__(self, device: str = "cpu", warmup: int = 8, repeats: int = 3, threads: int | None = None,
                 max_params: int = 50_000_000, dtype: str | None = None, seed: int = 0, cuda_graphs: bool = True,
                 bucket: int = 256, clock: str = "wall", isolate_probes: bool = False):
        self.warmup = _positive_int("warmup", warmup, 0)
        self.repeats = _positive_int("repeats", repeats)
        self.threads = None if threads is None else _positive_int("threads", threads)
        self.max_params = _positive_int("max_params", max_params)
        self.bucket = _positive_int("bucket", bucket)
        self.seed = int(seed)
        self.cuda_graphs = bool(cuda_graphs)
        self.isolate_probes = bool(isolate_probes)
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
        self.last_throughput: Any = None                  # throughput.ThroughputResult of the last search
        self.batch_cap: str | None = None                 # why the last batch search was capped, if it was
        self.probe_errors: dict[int, str] = {}            # batch -> size-limit error of the last batch search

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
        self._check_size(genome)
        with self._context():
            model = self._build(genome)
            times = self._time_decode(model, genome, workload, workload.batch)
        self.last_stats = LatencyStats(median_s=float(statistics.median(times)), min_s=float(min(times)),
                                       max_s=float(max(times)), repeats=len(times),
                                       decode_tokens=workload.decode_tokens, batch=workload.batch, source=self.source)
        return self.last_stats

    def max_batch_throughput(self, genome: Genome, workload: Workload, max_batch: int | None = None) -> float:
        """Decoded tokens/s at the largest batch (<= max_batch) whose static decode fits in memory; details in
        `last_throughput`. See throughput.max_batch_throughput."""
        from .throughput import max_batch_throughput

        self.batch_cap, self.probe_errors = None, {}
        if max_batch is None:
            max_batch = 4096 if self.device.type == "cuda" else 64
        cap = int32_batch_limit(genome, workload.prompt_len) if self.device.type == "cuda" else None
        if cap is not None and cap < max_batch:
            self.batch_cap = (f"max_batch {max_batch} -> {cap}: mamba-ssm's SSD kernels use int32 offsets and a "
                              f"{max(1, workload.prompt_len)}-token prefill of batch {cap + 1} would exceed 2^31 "
                              "elements")
            max_batch = max(1, cap)
        self.last_throughput = max_batch_throughput(self, genome, workload, max_batch)
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
        if self.isolate_probes:
            return self._fits_in_child(genome, workload, batch)
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
        except Exception as exc:  # noqa: BLE001 - classified below; anything else propagates unchanged
            kind = _error_class(exc)
            if kind == "size-limit":
                self.probe_errors[batch] = f"{type(exc).__name__}: {exc}"
                return False
            if kind == "context-lost":
                raise FlashsearchError(
                    f"measured: the probe of batch {batch} broke the CUDA context ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing more can be measured in this process. "
                    "Rerun with a lower max_batch (a kernel's int32 offsets are the usual cause)") from exc
            raise
        finally:
            del dec
            self._free()

    def _probe_command(self, genome: Genome, workload: Workload, batch: int) -> list[str]:
        spec = {"genome": genome.to_dict(), "workload": dataclasses.asdict(workload), "batch": batch,
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), "seed": self.seed,
                "bucket": self.bucket}
        return [sys.executable, "-m", "flashsearch.proxies.latency.measured", "probe", json.dumps(spec)]

    def _fits_in_child(self, genome: Genome, workload: Workload, batch: int) -> bool:
        """The probe in a child process: exit 0 fits, _PROBE_NO_ROOM out of memory / size limit; anything else
        (a crash, a broken CUDA context) is recorded in probe_errors and counts as not fitting."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # plug-in operators too
        proc = subprocess.run(self._probe_command(genome, workload, batch), capture_output=True, text=True, env=env)
        if proc.returncode == 0:
            return True
        if proc.returncode != _PROBE_NO_ROOM:
            tail = proc.stderr.strip().splitlines()[-1:] or [""]
            self.probe_errors[batch] = f"probe process exited {proc.returncode}: {tail[0][:300]}"
        return False

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
        """The decoder's CUDA graphs (StaticDecoder.capture); None, with the reason in capture_error, on failure."""
        try:
            graphs = dec.capture(prompt, n, self.bucket)
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


_PROBE_NO_ROOM = 3                                    # a child probe's exit status for "does not fit"


def _probe_main(spec_json: str) -> int:
    """One batch-search probe in this (child) process; see MeasuredPredictor._fits_in_child."""
    spec = json.loads(spec_json)
    genome = Genome.from_dict(spec["genome"])
    workload = Workload(**spec["workload"])
    pred = MeasuredPredictor(device=spec["device"], dtype=spec["dtype"], seed=spec["seed"], bucket=spec["bucket"],
                             max_params=10**15)
    with pred._context():
        fits = pred._fits(pred._build(genome), genome, workload, spec["batch"])
    return 0 if fits else _PROBE_NO_ROOM


if __name__ == "__main__" and sys.argv[1:2] == ["probe"]:
    sys.exit(_probe_main(sys.argv[2]))


__all__ = ["INT32_MAX", "LatencyStats", "MeasuredPredictor", "int32_batch_limit"]
