"""Stopping a search gracefully on SIGTERM / Ctrl-C."""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable


def graceful_stop() -> tuple[threading.Event, Callable[[], None]]:
    """While searching, SIGTERM (`kill PID`, a scheduler stopping the job) and Ctrl-C set a flag that the driver
    checks between storage operations: trials in flight are cancelled, failed as interrupted and re-queued, and
    a rerun resumes cleanly. (An exception raised from the handler could land inside Optuna's journal lock
    handling and leave it half done.) A second signal interrupts at once. Returns (event, undo)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return event, lambda: None

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def undo() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return event, undo


__all__ = ["graceful_stop"]
