"""torch's thread count while proxies train: process-wide, so set once for every evaluation running in a process.

Evaluations may run as threads of one process (ray.address=local). Setting the count around each evaluation and
restoring it after would race between them; instead the first evaluation to start sets it and the last one to
end restores it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import torch

_LOCK = threading.Lock()
_state = {"active": 0, "restore": 0}     # evaluations running; the count to restore when none is left


def _reset_after_fork() -> None:
    """A forked child (the studies' job pool forks) holds only the forking thread: a lock another thread held at
    the fork would never be released there, and that thread's evaluation is not running there."""
    global _LOCK
    _LOCK = threading.Lock()
    _state.update(active=0, restore=0)


os.register_at_fork(after_in_child=_reset_after_fork)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with torch using `n` threads (None: leave the count alone), shared by concurrent bodies."""
    with _LOCK:
        if _state["active"] == 0:
            _state["restore"] = torch.get_num_threads()
            if n is not None:
                torch.set_num_threads(n)
        _state["active"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _state["active"] -= 1
            if _state["active"] == 0:
                torch.set_num_threads(_state["restore"])


def active() -> int:
    """How many bodies of torch_threads are running in this process."""
    return _state["active"]


__all__ = ["torch_threads", "active"]
