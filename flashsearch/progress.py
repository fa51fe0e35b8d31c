"""Search progress: the events the driver emits and a plain-text printer for them (one line per finished trial).

Any callable taking a SearchEvent works as `progress=` in run_search; `Progress` is the default printer:

    [ 12/24] #13 done  loss 2.314  latency 9.81 s  (roofline:h100)  | running 2  failed 0  | best loss 2.201 @ 8.90 s  | 1m42s elapsed, ETA 1m30s
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol, TextIO

EventKind = Literal["start", "trial_started", "trial_done", "trial_cached", "trial_failed", "end"]


@dataclass(frozen=True)
class SearchEvent:
    kind: EventKind
    complete: int                    # COMPLETE trials in the study (earlier runs included)
    target: int                      # COMPLETE trials the search runs to
    running: int                     # trials in flight now
    failed: int                      # failed trials in this run
    elapsed_s: float                 # since this run started
    eta_s: float | None = None       # None until something finished in this run
    number: int | None = None        # the trial the event is about
    loss: float | None = None
    latency: float | None = None
    latency_source: str | None = None
    reason: str | None = None        # failure reason, or the stop reason for "end"
    cached_from: int | None = None
    best_number: int | None = None   # best so far (lowest loss; under the target when one is set)
    best_loss: float | None = None
    best_latency: float | None = None
    message: str | None = None       # free text for "start" / "end"
    # about the trial's candidate (trial events only), for loggers such as flashsearch.logging_wandb
    genome_id: str | None = None
    summary: str | None = None       # layer pattern in the paper's letters
    params: Mapping[str, Any] | None = None  # the search space's parameters
    d_model: int | None = None
    n_layers: int | None = None
    metrics: Mapping[str, Any] | None = None  # extra metrics of a finished evaluation ("trial_done")
    error_kind: str | None = None    # "trial_failed": rejected | invalid_result | error | oom | timeout | worker_died
    rung: int | None = None          # multi-fidelity: the rung the trial trained to (None: single fidelity)
    top_rung: int | None = None
    candidate: int | None = None     # multi-fidelity: the screening trial a promotion continues


class ProgressListener(Protocol):
    def __call__(self, event: SearchEvent) -> None: ...


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


class Progress:
    """Prints one line per finished / failed trial (and a start and end line) to `stream` (default stderr).

    total: trials the search runs to, used when an event carries no target (events from run_search do).
    verbose=True also prints a line when a trial starts.
    """

    def __init__(self, stream: TextIO | None = None, *, total: int | None = None, verbose: bool = False) -> None:
        self.stream = stream
        self.total = total
        self.verbose = verbose

    def __call__(self, event: SearchEvent) -> None:
        line = self.format(event)
        if line is not None:
            out = self.stream if self.stream is not None else sys.stderr
            try:
                print(line, file=out, flush=True)
            except (OSError, ValueError):
                pass  # closed stream or broken pipe (`... | head`): progress is not worth stopping a search for

    def format(self, e: SearchEvent) -> str | None:
        target = e.target if e.target or self.total is None else self.total
        width = len(str(target))
        head = f"[{e.complete:>{width}}/{target}]"
        status = f"running {e.running}  failed {e.failed}"
        if e.best_loss is not None:
            best = f"best loss {_num(e.best_loss)} @ {_num(e.best_latency, 2)} s"
        else:
            best = "best -"
        clock = f"{format_duration(e.elapsed_s)} elapsed, ETA {format_duration(e.eta_s)}"
        if e.kind == "start":
            return f"{head} search started: {e.message or ''}".rstrip()
        if e.kind == "end":
            return f"{head} search finished ({e.reason or 'done'}): {e.message or ''}".rstrip()
        if e.kind == "trial_started":
            return f"{head} #{e.number} started  | {status}" if self.verbose else None
        if e.kind in ("trial_done", "trial_cached"):
            what = "done " if e.kind == "trial_done" else f"cached (= #{e.cached_from})"
            if e.rung is not None:
                what += f" rung {e.rung}/{e.top_rung}" + (f" (of #{e.candidate})" if e.rung else "")
            src = f"  ({e.latency_source})" if e.latency_source else ""
            return (f"{head} #{e.number} {what} loss {_num(e.loss)}  latency {_num(e.latency, 2)} s{src}"
                    f"  | {status}  | {best}  | {clock}")
        if e.kind == "trial_failed":
            return f"{head} #{e.number} FAILED: {e.reason}  | {status}  | {best}  | {clock}"
        return None


__all__ = ["SearchEvent", "EventKind", "ProgressListener", "Progress", "format_duration"]
