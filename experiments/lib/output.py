"""The header every study result carries, so each number can be traced to a command, a runtime and a machine."""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path



def machine_line() -> str:
    from flashsearch.proxies.latency.machine import cpu_name

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_name()}, {os.cpu_count()} CPU cores, {gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def command_line() -> str:
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def header(title: str, started: float, train_seconds: float, clock: str = "CPU") -> str:
    """Markdown header: title, command, date, this invocation's wall time since `started`
    (time.perf_counter()), the summed time of every training behind the table, and the machine. `clock` says what
    train_seconds counts: "CPU" (process time) or "wall" (each training's own wall time, which exceeds its CPU
    time when trainings outnumber the cores)."""
    minutes = (time.perf_counter() - started) / 60
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"# {title}\n\n"
            f"- command: `{command_line()}`\n"
            f"- finished: {date}; this invocation {minutes:.1f} min wall; the trainings behind the table took "
            f"{train_seconds / 60:.1f} {clock}-min in all (one core each). They are cached in the CSV next to this "
            "file: a rerun only trains what is missing.\n"
            f"- machine: {machine_line()}\n")


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Lay out, write atomically (a reader never sees half a PNG) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    from flashsearch.archive import atomic_path

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (studies run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
