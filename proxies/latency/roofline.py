"""Analytic (roofline) latency of batch-B autoregressive decoding on a GPU, from a device profile.

Model. Decoding `N = workload.decode_tokens` tokens after a `P = workload.prompt_len` prompt runs N sequential
steps; step s (s = 0..N-1) sees context c_s = P + s tokens already in every layer's state. Each layer of
operator type `op` does the work `flashsearch.kernels.decode_cost(genome, op, c)` (batch-1 element counts:
weights read, state read/written, FLOPs, kernel launches). With BW and F the achievable bandwidth and FLOP/s of
the device (datasheet peak x efficiency), t_k the fixed cost of one kernel inside a CUDA graph and t_op the fixed
cost of one operator (see below), one layer takes

    t_layer(c) = max( (W * b_w + B * S(c) * b_s) / BW ,  B * FLOPs(c) / F ) + launches * t_k + t_op

weights W are read once per step whatever the batch (b_w bytes each); the state traffic S (read + written) and the
FLOPs scale with the batch. b_s is the dtype each state is KEPT in: KV caches (attention, SWA) in the weight dtype,
recurrent states (Mamba2's SSM state, DeltaNet / GDN / GLA matrices, with their short-conv windows) in fp32, as
the operators' init_state keeps them (`recurrent_state_dtype`). decode_cost includes each layer's fused
residual-add + pre-RMSNorm kernel. Each step also has a head, one operator of four kernels: embedding gather,
final RMSNorm, LM head (reads vocab x d_model whether the embedding is tied or not, 2 * B * vocab * d_model FLOPs,
writes the logits), sampling over the logits:

    t_head = sum_k max(bytes_k / BW, flops_k / F) + 4 * t_k + t_op
    latency = sum_s [ sum_layers t_layer(c_s) + t_head ]

Why a per-operator term. Batch-1 decode kernels are far too small to reach the bandwidth a long GEMV reaches:
each operator pays ramp-up, tail and synchronisation between its dependent kernels, tens of microseconds in
all. The paper's H100 table (Nemotron-Flash, Table 6: TensorRT-LLM, CUDA graphs, 8k tokens) pins it: bytes over
the datasheet bandwidth leave ~50 us per operator for each of Flash-1B (24 layers + head), Qwen3-0.6B (56),
Llama-3.2-1B (32) and Flash-3B (36). `operator_overhead_us` (device profile) holds that fitted value;
experiments/roofline_fit/ fits it and reports leave-one-out errors.

Full attention's KV read grows linearly with c, sliding-window attention is capped at its window, recurrent
operators (Mamba2, DeltaNet, ...) read a constant state; all of that lives in the operators' decode_cost.

Vectorization: decode_cost is called per distinct operator type on a coarse grid of contexts and refined by
bisection wherever the counts are not linear between grid points (a piecewise-linear cost such as min(c, window)
is recovered exactly); the per-step times are then numpy arrays over all N steps. A Flash-1B prediction costs a
few hundred decode_cost calls, not N x layers.

Not modelled: prefill (the workload times decoding), kernel fusion beyond what decode_cost counts, L2-cache
reuse, and tensor-parallel communication.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.devices import (DTYPE_BYTES, DeviceProfile, canonical_dtype,
                                                 load_device)

if TYPE_CHECKING:
    from flashsearch.proxies.latency.validate import ValidationContext

# Column order of a cost table row.
_FIELDS = ("weight_elems", "state_read_elems", "state_write_elems", "flops", "launches")
_GRID_POINTS = 33                         # coarse grid over the context range before bisection refinement
HEAD = "embedding+lm_head"
RECURRENT_STATE_DTYPE = "fp32"            # what the recurrent operators' init_state keeps (acc_dtype of bf16/fp16)


def holds_kv_cache(op: str) -> bool:
    """Whether `op` keeps its state as a KV cache (in the weight dtype) rather than a recurrent state (fp32)."""
    from flashsearch import kernels
    from flashsearch.kernels.attention import Attention

    return issubclass(kernels.operator_class(op), Attention)


def _decode_cost_vector(genome: Genome, op: str, context: int) -> np.ndarray:
    from flashsearch import kernels  # lazy: the kernels package imports torch modules

    cost = kernels.decode_cost(genome, op, int(context))
    return np.array([float(getattr(cost, f)) for f in _FIELDS], dtype=np.float64)


def piecewise_linear_table(f: Callable[[int], np.ndarray], lo: int, hi: int,
                           grid_points: int = _GRID_POINTS) -> np.ndarray:
    """Rows f(c) for every integer c in [lo, hi], from few calls of f.

    Exact when f is linear between the points where it changes slope (one kink per grid cell is always found,
    because a single kink moves the cell midpoint off the chord); each non-linear cell is bisected.
    """
    n = hi - lo + 1
    seen: dict[int, np.ndarray] = {}

    def at(c: int) -> np.ndarray:
        if c not in seen:
            seen[c] = np.asarray(f(c), dtype=np.float64)
        return seen[c]

    first = at(lo)
    out = np.empty((n, first.shape[0]), dtype=np.float64)

    def fill(a: int, b: int) -> None:
        fa, fb = at(a), at(b)
        if b - a <= 1:
            out[a - lo], out[b - lo] = fa, fb
            return
        m = (a + b) // 2
        chord_m = fa + (fb - fa) * ((m - a) / (b - a))
        if np.allclose(at(m), chord_m, rtol=1e-9, atol=1e-6):
            c = np.arange(a, b + 1, dtype=np.float64)[:, None]
            # Weighted form: exact for integer counts (integer numerator, exact division).
            out[a - lo:b - lo + 1] = (fa * (b - c) + fb * (c - a)) / (b - a)
        else:
            fill(a, m)
            fill(m, b)

    if n == 1:
        out[0] = first
        return out
    grid = np.unique(np.linspace(lo, hi, min(n, grid_points)).round().astype(np.int64))
    for a, b in zip(grid[:-1].tolist(), grid[1:].tolist()):
        fill(a, b)
    return out


@functools.lru_cache(maxsize=128)  # an 8k-step table is ~330 KB; a search re-asks recent genomes at a few widths
def _cost_table(genome: Genome, op: str, first_context: int, n_steps: int, exact: bool) -> np.ndarray:
    """[n_steps, 5] decode costs of one `op` layer for contexts first_context .. first_context+n_steps-1."""
    f = functools.partial(_decode_cost_vector, genome, op)
    hi = first_context + n_steps - 1
    if exact:
        table = np.stack([f(c) for c in range(first_context, hi + 1)])
    else:
        table = piecewise_linear_table(f, first_context, hi)
    table.setflags(write=False)  # shared through the cache
    return table


@dataclass(frozen=True)
class OpLatency:
    """Share of the predicted latency spent in one operator type (all its layers, all decode steps)."""

    op: str
    layers: int
    seconds: float
    share: float                  # of the total
    launch_seconds: float         # part of `seconds` that is fixed cost (per kernel and per operator)
    launches_per_step: float      # all layers of this type
    weight_bytes: float           # read per step, all layers of this type
    mean_state_bytes: float       # state read + written per step, averaged over steps
    memory_bound_share: float     # fraction of (layer, step) pairs where bytes, not FLOPs, set the time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RooflinePredictor:
    """Predicted decode latency (seconds) of the full-size genome on a GPU described by a device profile.

    device: shipped profile name (h100, a100, h200) or a profile .yaml path; it decides the number (Workload's
    own device/dtype fields are not consulted, so one predictor gives one consistent `source`).
    dtype: weight dtype; state_dtype: KV-cache dtype (default: dtype); recurrent_state_dtype: dtype of the
    recurrent operators' states (default fp32, what the model keeps).
    cuda_graphs: per-kernel cost with CUDA graphs (default) or eager launches.
    exact: call decode_cost at every context instead of the piecewise-linear sampling (slow; for checking).
    """

    def __init__(self, device: str = "h100", dtype: str = "bf16", state_dtype: str | None = None,
                 cuda_graphs: bool = True, exact: bool = False, recurrent_state_dtype: str = RECURRENT_STATE_DTYPE):
        self.profile: DeviceProfile = load_device(device)
        self.device = self.profile.name
        self.dtype = canonical_dtype(dtype)
        self.state_dtype = canonical_dtype(state_dtype) if state_dtype is not None else self.dtype
        self.recurrent_state_dtype = canonical_dtype(recurrent_state_dtype)
        self.cuda_graphs = bool(cuda_graphs)
        self.exact = bool(exact)
        self._bw = self.profile.bandwidth()
        self._flops = self.profile.flops(self.dtype)  # also rejects a dtype the device lacks
        self._launch = self.profile.launch_seconds(self.cuda_graphs)
        self._per_op = self.profile.operator_overhead_us * 1e-6
        self.source = f"roofline:{self.device}"

    def __repr__(self) -> str:
        return (f"RooflinePredictor(device={self.device!r}, dtype={self.dtype!r}, state_dtype={self.state_dtype!r}, "
                f"recurrent_state_dtype={self.recurrent_state_dtype!r}, cuda_graphs={self.cuda_graphs})")

    @classmethod
    def for_validation(cls, ctx: ValidationContext) -> RooflinePredictor:
        """For `flashsearch latency validate`, which times fp32 CPU decoding: --roofline-device, where `cpu` is
        the shipped CPU fit (it lives with the CPU tables, not among the GPU profiles)."""
        device = ctx.roofline_device
        if device == "cpu":
            device = str(resources.files("flashsearch.proxies.latency").joinpath("tables", "roofline_cpu.yaml"))
        return cls(device=device, dtype="fp32")

    # ---- public API -----------------------------------------------------------------------------------------
    def predict(self, genome: Genome, workload: Workload) -> float:
        """End-to-end decode seconds for `workload` (sum over the decode steps)."""
        return float(sum(r.seconds for r in self.breakdown(genome, workload)))

    def step_seconds(self, genome: Genome, workload: Workload) -> np.ndarray:
        """Seconds of each decode step, [decode_tokens] (grows with context when the genome has full attention)."""
        total = np.zeros(workload.decode_tokens)
        for per_step, _ in self._terms(genome, workload).values():
            total += per_step
        return total

    def breakdown(self, genome: Genome, workload: Workload) -> list[OpLatency]:
        """Latency per operator type (norms included), in order of first appearance, then the embedding/LM head."""
        terms = self._terms(genome, workload)
        total = sum(float(t.sum()) for t, _ in terms.values()) or 1.0
        rows = []
        for op, (per_step, info) in terms.items():
            secs = float(per_step.sum())
            rows.append(OpLatency(op=op, seconds=secs, share=secs / total, **info))
        return rows

    # ---- the model --------------------------------------------------------------------------------------------
    def _state_bytes(self, op: str) -> int:
        return DTYPE_BYTES[self.state_dtype if holds_kv_cache(op) else self.recurrent_state_dtype]

    def _layer_times(self, table: np.ndarray, batch: int, state_bytes: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seconds per step, fixed-cost part, memory-bound mask) of ONE layer from its [N, 5] cost table."""
        weight, s_read, s_write, flops, launches = table.T
        nbytes = weight * DTYPE_BYTES[self.dtype] + batch * (s_read + s_write) * state_bytes
        t_mem = nbytes / self._bw
        t_comp = batch * flops / self._flops
        t_fixed = launches * self._launch + self._per_op
        return np.maximum(t_mem, t_comp) + t_fixed, t_fixed, t_mem >= t_comp

    def _terms(self, genome: Genome, workload: Workload) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        n, b, d = workload.decode_tokens, workload.batch, genome.d_model
        wb, ab = DTYPE_BYTES[self.dtype], DTYPE_BYTES[self.dtype]
        terms: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
        for op in dict.fromkeys(genome.layer_types):  # distinct, in order
            count = genome.count(op)
            table = _cost_table(genome, op, workload.prompt_len, n, self.exact)
            sb = self._state_bytes(op)
            per_layer, launch, mem_bound = self._layer_times(table, b, sb)
            terms[op] = (per_layer * count, dict(
                layers=count,
                launch_seconds=float(launch.sum()) * count,
                launches_per_step=float(table[0, 4]) * count,
                weight_bytes=float(table[0, 0]) * wb * count,
                mean_state_bytes=float((table[:, 1] + table[:, 2]).mean()) * b * sb * count,
                memory_bound_share=float(mem_bound.mean()),
            ))
        # Head: embedding gather, final norm, LM head (vocab x d_model read, logits written), sampling.
        v = genome.vocab_size
        head_kernels = [
            (b * d * wb + b * d * ab, 0.0),                          # embedding rows for B tokens
            (d * wb + 2 * b * d * ab, 0.0),                          # final RMSNorm
            (v * d * wb + b * v * ab, 2.0 * b * v * d),              # LM head GEMV/GEMM
            (b * v * ab, 0.0),                                       # sampling / argmax over logits
        ]
        head_fixed = len(head_kernels) * self._launch + self._per_op
        head_step = sum(max(nb / self._bw, fl / self._flops) for nb, fl in head_kernels) + head_fixed
        terms[HEAD] = (np.full(n, head_step), dict(
            layers=0, launch_seconds=head_fixed * n,
            launches_per_step=float(len(head_kernels)), weight_bytes=float((v * d + d) * wb),
            mean_state_bytes=0.0,
            memory_bound_share=float(all(nb / self._bw >= fl / self._flops for nb, fl in head_kernels))))
        return terms


def bandwidth_floor_seconds(genome_weight_bytes: float, device: str, decode_tokens: int) -> float:
    """Physical floor: every weight byte read once per token at the datasheet bandwidth."""
    profile = load_device(device)
    return genome_weight_bytes * decode_tokens / (profile.memory_bandwidth_gbs * 1e9)


def format_breakdown(rows: list[OpLatency]) -> str:
    """A small text table for `flashsearch describe`."""
    lines = [f"{'operator':<18}{'layers':>7}{'seconds':>10}{'share':>8}{'launch s':>10}{'kernels/step':>13}"
             f"{'weights MB':>12}{'state MB':>10}"]
    for r in rows:
        lines.append(f"{r.op:<18}{r.layers:>7}{r.seconds:>10.3f}{r.share:>8.1%}{r.launch_seconds:>10.3f}"
                     f"{r.launches_per_step:>13.0f}{r.weight_bytes / 1e6:>12.1f}{r.mean_state_bytes / 1e6:>10.2f}")
    total = sum(r.seconds for r in rows)
    lines.append(f"{'total':<18}{'':>7}{total:>10.3f}")
    if not math.isfinite(total):
        lines.append("(non-finite total: check the device profile)")
    return "\n".join(lines)
