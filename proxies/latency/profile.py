"""Operator profiling for the `lut` latency predictor: time one decode step of each operator on this machine.

A cell (operator, width, context) is the wall-clock time of one HybridLM layer's decode step -- the pre-norm
residual block `x + op.step(norm(x), state)` at batch 1 under torch.inference_mode, averaged over a stack of
distinct layers so weights are not unrealistically cache-hot -- with `context` tokens
already in the operator's state (filled by the operator's parallel `prefill`, untimed). The head (embedding
gather + final RMSNorm + tied LM head + greedy argmax, what HybridLM.step and the decode loop add per token) is
profiled per (vocab, width). Genomes are built with one fixed small-width recipe (`ProfileRecipe`: head_dim,
GQA group, FFN ratio, operator options) that is stored in the table, so a predictor can tell when a genome
differs from what was profiled.

Clock: by default the CPU time of the timing thread (`clock="thread"`, torch limited to 1 thread), because on a
shared machine wall-clock samples of the same cell varied 2x while thread CPU time varied ~20%; `clock="wall"`
times what a user waits on an idle machine.

Noise: every cell is timed `repeats` times in interleaved rounds (round r times all cells before round r+1), and
the median per-step time is kept, so a burst of load from other processes hits one sample of many cells rather
than all samples of one cell.

The table is data (JSON), never a pickle:
    {"format": "flashsearch-lut/1", "meta": {...}, "widths": [...], "contexts": [...], "vocabs": [...],
     "ops": {op: [[seconds per step for each context] for each width]}, "head": [[seconds for each width] ...]}
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from flashsearch import operators
from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome, canonical_operator
from flashsearch.proxies.latency.machine import this_machine

TABLE_FORMAT = "flashsearch-lut/1"
DEFAULT_WIDTHS = (32, 64, 96, 128, 160, 192)
DEFAULT_CONTEXTS = (0, 256, 1024, 4096)
DEFAULT_VOCABS = (256, 1024)


@dataclass(frozen=True)
class ProfileRecipe:
    """How a genome of width d is built for profiling (and for small-width validation, so the two agree)."""

    head_dim: int = 32
    kv_group: int = 4
    ffn_ratio: float = 3.0
    op_options: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: {"mamba2": {"d_state": 16, "head_dim": 32, "expand": 2}})

    def genome(self, layer_types: Sequence[str], d_model: int, vocab_size: int) -> Genome:
        n_heads = max(1, d_model // self.head_dim)
        n_kv = max(1, n_heads // self.kv_group)
        while n_heads % n_kv:
            n_kv -= 1
        return Genome(layer_types=tuple(layer_types), d_model=int(d_model), n_heads=n_heads, n_kv_heads=n_kv,
                      head_dim=self.head_dim, ffn_ratio=self.ffn_ratio, vocab_size=int(vocab_size),
                      op_options={k: dict(v) for k, v in self.op_options.items()})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_options"] = {k: dict(v) for k, v in self.op_options.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProfileRecipe":
        return cls(head_dim=int(d["head_dim"]), kv_group=int(d["kv_group"]), ffn_ratio=float(d["ffn_ratio"]),
                   op_options={k: dict(v) for k, v in (d.get("op_options") or {}).items()})


# Clocks: "thread" = CPU time of the calling thread (with 1 torch thread all work runs on it), robust when other
# processes share the cores (time spent descheduled is not counted); "wall" = perf_counter, what a user waits.
CLOCKS: dict[str, Callable[[], float]] = {"thread": time.thread_time, "wall": time.perf_counter}


def _clock(name: str) -> Callable[[], float]:
    if name not in CLOCKS:
        raise FlashsearchError(f"clock {name!r} is not one of {', '.join(CLOCKS)}")
    return CLOCKS[name]


def _mean_step(fn: Callable[[], None], steps: int, now: Callable[[], float]) -> float:
    t0 = now()
    for _ in range(steps):
        fn()
    return (now() - t0) / steps


class _LayerCell:
    """One (op, width, context) cell: a stack of `layers` distinct Blocks of `op`, states prefilled to `context`.

    Why a stack: in a real model every layer has its own weights, so a decode step streams the whole model
    through the caches; timing one block over and over keeps its weights cache-hot and underestimates a layer
    by 10-40% at widths >= 128 on this CPU. The per-layer time is the stack's time / `layers`.
    """

    def __init__(self, op: str, genome: Genome, context: int, steps: int, dtype: torch.dtype, layers: int = 8,
                 now: Callable[[], float] = time.thread_time):
        from flashsearch.kernels import build_operator
        from flashsearch.model.hybrid import Block

        torch.manual_seed(0)
        d = genome.d_model
        self.blocks = [Block(build_operator(op, genome), d).to(dtype).eval() for _ in range(layers)]
        self.steps, self.now = steps, now
        self.x = torch.randn(1, 1, d, dtype=dtype)
        self.prefilled = []
        for block in self.blocks:
            state = block.op.init_state(1, context + steps + 1, "cpu", dtype)
            if context > 0:
                # Prefill cheaply with the operator's parallel form; the state's values do not change the timing.
                _, state = block.prefill(torch.randn(1, context, d, dtype=dtype) * 0.1, state)
            self.prefilled.append(state)

    def time_step(self) -> float:
        # A fresh copy of the prefilled states per sample: a KV cache must not keep growing across samples.
        states = copy.deepcopy(self.prefilled)
        blocks, x0 = self.blocks, self.x

        def one() -> None:
            x = x0
            for i, block in enumerate(blocks):      # the residual stream flows through the stack, as in HybridLM
                x, states[i] = block.step(x, states[i])

        one()  # warm this state (first touch of copied memory)
        return _mean_step(one, self.steps - 1, self.now) / len(blocks)


class _HeadCell:
    """Embedding gather + final norm + tied LM head + argmax for one token: the per-step cost outside layers."""

    def __init__(self, d_model: int, vocab: int, steps: int, dtype: torch.dtype,
                 now: Callable[[], float] = time.thread_time):
        from flashsearch.kernels._common import RMSNorm

        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, d_model).to(dtype)
        self.norm = RMSNorm(d_model).to(dtype)
        self.token = torch.zeros(1, 1, dtype=torch.long)
        self.steps, self.now = steps, now

    def time_step(self) -> float:
        emb, norm = self.embed, self.norm
        token = self.token

        def one() -> None:
            nonlocal token
            x = emb(token)
            logits = torch.nn.functional.linear(norm(x), emb.weight)
            token = logits.argmax(-1)

        one()
        return _mean_step(one, self.steps, self.now)


def profile_table(widths: Sequence[int] = DEFAULT_WIDTHS, contexts: Sequence[int] = DEFAULT_CONTEXTS,
                  ops: Sequence[str] | None = None, vocabs: Sequence[int] = DEFAULT_VOCABS,
                  recipe: ProfileRecipe | None = None, steps: int = 16, repeats: int = 5, layers: int = 24,
                  threads: int | None = 1, clock: str = "thread", command: str = "",
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Profile every (op, width, context) cell and the head per (vocab, width); returns the table dict."""
    now = _clock(clock)
    recipe = recipe or ProfileRecipe()
    ops = [canonical_operator(o, where="--ops") for o in (ops or operators.names())]
    widths = sorted({int(w) for w in widths})
    contexts = sorted({int(c) for c in contexts})
    vocabs = sorted({int(v) for v in vocabs})
    if not widths or min(widths) <= 0 or not contexts or min(contexts) < 0 or not vocabs or min(vocabs) <= 0:
        raise FlashsearchError("profile: widths and vocabs must be positive integers and contexts >= 0")
    if steps < 2 or repeats < 1 or layers < 1:
        raise FlashsearchError("profile: steps must be >= 2, repeats >= 1 and layers >= 1")
    say = progress or (lambda _msg: None)
    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        with torch.inference_mode():
            cells: dict[tuple[str, ...], Any] = {}
            for w in widths:
                for op in ops:
                    # A genome must hold a mixer; the extra layer is never built, only `op` is.
                    g = recipe.genome([op] if op != "ffn" else ["ffn", "attention"], w, vocabs[0])
                    for c in contexts:
                        cells[("op", op, str(w), str(c))] = _LayerCell(op, g, c, steps, torch.float32, layers, now)
                for v in vocabs:
                    cells[("head", str(v), str(w))] = _HeadCell(w, v, steps, torch.float32, now)
            samples: dict[tuple[str, ...], list[float]] = {k: [] for k in cells}
            t_start = time.perf_counter()
            for r in range(repeats):  # interleaved rounds: each round times every cell once
                for key, cell in cells.items():
                    samples[key].append(cell.time_step())
                elapsed = time.perf_counter() - t_start
                eta = elapsed / (r + 1) * (repeats - r - 1)
                say(f"profile: round {r + 1}/{repeats} of {len(cells)} cells done, {elapsed:.0f}s elapsed, "
                    f"ETA {eta:.0f}s")
    finally:
        torch.set_num_threads(prev_threads)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "format": TABLE_FORMAT,
        "meta": {
            **this_machine("cpu", threads if threads is not None else prev_threads),  # device, device_name, ...
            "python": platform.python_version(),
            "dtype": "fp32",
            "batch": 1,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "clock": clock,
            "steps_per_sample": steps,
            "layers_per_stack": layers,
            "repeats": repeats,
            "statistic": "median over interleaved repeats of the mean step time",
            "recipe": recipe.to_dict(),
            "what": "seconds of one decode step at batch 1: ops = one pre-norm residual layer around op.step "
                    "with `context` tokens already in its state (mean over a stack of distinct layers); head = embedding + final norm + tied LM head "
                    "+ argmax",
        },
        "widths": widths,
        "contexts": contexts,
        "vocabs": vocabs,
        "ops": {op: [[med[("op", op, str(w), str(c))] for c in contexts] for w in widths] for op in ops},
        "head": [[med[("head", str(v), str(w))] for w in widths] for v in vocabs],
    }


def write_table(table: Mapping[str, Any], out: str | Path) -> Path:
    """Write atomically (a half-written table is never left behind)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(path)
    return path


def progress_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


__all__ = ["ProfileRecipe", "profile_table", "write_table", "TABLE_FORMAT", "DEFAULT_WIDTHS",
           "DEFAULT_CONTEXTS", "DEFAULT_VOCABS"]
