"""One controller per run directory: an exclusive flock held for the whole run."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from flashsearch.errors import FlashsearchError

CONTROLLER_LOCK = ".controller.lock"


class ControllerLock:
    """One controller per out_dir: an exclusive flock on OUT_DIR/.controller.lock, held for the whole run.

    The kernel drops a flock when its process dies, however it dies (kill -9 included), so a lock that can be
    taken is never held by a live controller; only then are the study journal's leftovers repaired.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / CONTROLLER_LOCK
        self._fd: int | None = None

    def acquire(self) -> "ControllerLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FlashsearchError(
                f"{self.path.parent} is in use by another flashsearch run (pid {holder}); wait for it to finish, "
                "stop it, or choose another out_dir=...") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (harmless, reused next time)
            self._fd = None

    def __enter__(self) -> "ControllerLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


__all__ = ["ControllerLock", "CONTROLLER_LOCK"]
