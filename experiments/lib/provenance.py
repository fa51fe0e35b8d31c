"""Where a result came from: the git revision, the settings and the machine, written next to every result.

Each study run writes `<stem>.meta.json` beside its results (`python -m experiments run` does it for every file
the run wrote), and markdown results carry the same facts in their header (`header_lines`). A revision ending in
"-dirty" means the working tree had uncommitted changes when the study started.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

ROOT = Path(__file__).resolve().parents[2]
RECOVERED = "(recovered from git history)"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def git_revision() -> str:
    """HEAD's commit, plus "-dirty" if tracked files differ from it; "unknown" outside a git checkout."""
    try:
        rev = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def last_commit_of(path: str | Path) -> str:
    """The commit that last changed `path` (following renames): the best-known producer of an old result."""
    return _git("log", "-1", "--follow", "--format=%H", "--", str(Path(path).resolve().relative_to(ROOT)))


def machine() -> dict[str, Any]:
    """CPU model, cores, GPU, Python and torch versions."""
    import torch

    from flashsearch.proxies.latency.machine import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__}


def machine_line(m: Mapping[str, Any] | None = None) -> str:
    m = machine() if m is None else m
    return (f"{m['cpu']}, {m['cores']} CPU cores, {m['gpu'] or 'no GPU'}, Python {m['python']}, "
            f"torch {m['torch']}")


def command_line() -> str:
    """The command as typed, relative to the repository root."""
    if sys.argv and Path(sys.argv[0]).name == "__main__.py":
        return " ".join(["python -m experiments", *sys.argv[1:]])
    script = Path(sys.argv[0]) if sys.argv else Path("python")
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def provenance(study: str, settings: Mapping[str, Any], revision: str | None = None) -> dict[str, Any]:
    """The facts every result of one study run carries."""
    return {"study": study, "revision": revision or git_revision(), "command": command_line(),
            "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "settings": dict(settings),
            "machine": machine()}


def header_lines(meta: Mapping[str, Any]) -> list[str]:
    """Markdown bullet lines of a provenance mapping (for a result's header)."""
    settings = ", ".join(f"{k}={v!r}" for k, v in meta["settings"].items())
    return [f"- revision: `{meta['revision']}`", f"- command: `{meta['command']}`",
            f"- settings: {settings}", f"- machine: {machine_line(meta['machine'])}"]


def sidecar_path(result: str | Path) -> Path:
    """depth_width.csv, .md and .png share depth_width.meta.json."""
    p = Path(result)
    return p.with_name(p.name.split(".")[0] + ".meta.json")


def write_sidecars(results: Iterable[str | Path], meta: Mapping[str, Any]) -> list[Path]:
    """Write (or update) the .meta.json of each result's stem: `meta` (this run) on top, and under "files" the
    revision behind each file, older files of the stem keeping theirs. Keys a study wrote into the sidecar
    itself during this run are kept (meta wins on a clash)."""
    from experiments.lib.output import write_text

    groups: dict[Path, list[str]] = {}
    for r in map(Path, results):
        if not r.name.endswith(".meta.json"):
            groups.setdefault(sidecar_path(r), []).append(r.name)
    started = datetime.fromisoformat(meta["date_utc"]).timestamp()
    written = []
    for side, names in sorted(groups.items()):
        old = json.loads(side.read_text()) if side.exists() else {}
        own = old if side.exists() and side.stat().st_mtime >= started else {}
        files = {**(old.get("files") or {}), **{n: meta["revision"] for n in names}}
        body = {**meta, **{k: v for k, v in own.items() if k not in meta}, "files": dict(sorted(files.items()))}
        written.append(write_text(side, json.dumps(body, indent=2, default=str) + "\n"))
    return written
