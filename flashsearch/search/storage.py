"""The study's storage: Optuna's journal file, with fsync where it buys durability and nowhere else.

Optuna's JournalFileBackend fsyncs every append. A trial is ~25 appends (create, one per parameter, sampler
and driver attributes, tell), so the controller pays ~25 fsyncs per trial: on the shared 2-core dev machine that
measured 40-96 ms/trial while the disk was busy (fsync ~4 ms) and 17 ms/trial while it was quiet - over or at the
20 ms/trial budget either way (experiments/controller_overhead/results/overhead_cpu.md). One fsync per trial keeps it well under.

JournalFile keeps the file format, the writer lock and the one-write-per-append discipline (each append is a
single write() of whole lines in append mode, so a killed process leaves either all of it or, at worst, a
partial last line that repair_journal below cuts), and fsyncs only the appends that change what a resume
relies on: study creation and study attributes, trial state changes (tell: COMPLETE / FAIL with values) and
trials created WAITING (enqueued seeds, retries and re-queued orphans). Everything written is in the page cache as soon as write() returns, so a killed
controller (kill -9, OOM killer) loses nothing; only an OS crash or power loss can lose the un-synced attribute
writes of the trials in flight, which a resume treats like any interrupted trial.

The file stays a plain Optuna journal: optuna-dashboard, optuna.load_study and `flashsearch report` read it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

# Operations after which the journal is fsynced (values of optuna's JournalOperation).
_CREATE_STUDY, _DELETE_STUDY, _SET_STUDY_USER_ATTR, _SET_STUDY_SYSTEM_ATTR = 0, 1, 2, 3
_CREATE_TRIAL, _SET_TRIAL_STATE_VALUES, _DISCARD_TRIALS = 4, 6, 10
SYNC_OPS = frozenset({_CREATE_STUDY, _DELETE_STUDY, _SET_STUDY_USER_ATTR, _SET_STUDY_SYSTEM_ATTR,
                      _SET_TRIAL_STATE_VALUES, _DISCARD_TRIALS})
_WAITING = 4  # TrialState.WAITING: a trial created in this state was enqueued (seed, retry, re-queued orphan)


def must_sync(log: dict[str, Any]) -> bool:
    """State changes, and enqueued trials (a seed or retry lost to a power cut would never run)."""
    op = log.get("op_code")
    return op in SYNC_OPS or (op == _CREATE_TRIAL and log.get("state") == _WAITING)


class JournalFile(JournalFileBackend):
    """JournalFileBackend that fsyncs only appends holding an operation that must_sync (see module doc).

    fsync="always" behaves exactly like Optuna's backend; fsync="never" leaves durability to the OS.
    """

    def __init__(self, file_path: str, fsync: str = "state", **kw: Any) -> None:
        if fsync not in ("state", "always", "never"):
            raise ValueError(f"fsync must be 'state', 'always' or 'never', got {fsync!r}")
        super().__init__(file_path, **kw)
        self.fsync = fsync

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        sync = self.fsync == "always" or (self.fsync == "state" and any(must_sync(log) for log in logs))
        with get_lock_file(self._lock):
            fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:  # one write() in practice; loop only for a short write (disk full, signals)
                    view = view[os.write(fd, view):]
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)


def repair_journal(path: Path) -> list[str]:
    """Make a journal left by a killed controller safe to append to; returns notes on what was repaired.

    Call only while holding the ControllerLock (no other writer). Two leftovers are possible:
    - Optuna's writer lock (`<journal>.lock`, a symlink or file) if the process died inside append_logs:
      Optuna would wait its 30 s grace period and then break it; nobody holds it, so it is removed now.
    - a last line without its newline if the process died mid-write: Optuna skips it on read but a later
      append would glue onto it and corrupt the journal, so the partial line (an unfinished write, never
      acknowledged) is cut off.
    """
    notes: list[str] = []
    lock = Path(str(path) + ".lock")
    if lock.is_symlink() or lock.exists():
        lock.unlink()
        notes.append(f"removed a stale journal lock {lock.name} left by a stopped run")
    for leftover in path.parent.glob(path.name + ".lock*.rename"):
        leftover.unlink(missing_ok=True)
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 1))
            if f.read(1) != b"\n":
                f.seek(0)
                data = f.read()
                keep = data.rfind(b"\n") + 1
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
                notes.append(f"cut an unfinished last write ({size - keep} bytes) from {path.name}")
    return notes


def journal_storage(path: str | os.PathLike, fsync: str = "state") -> JournalStorage:
    """An Optuna JournalStorage on `path` backed by JournalFile."""
    return JournalStorage(JournalFile(str(path), fsync=fsync))


__all__ = ["JournalFile", "journal_storage", "repair_journal", "SYNC_OPS"]
