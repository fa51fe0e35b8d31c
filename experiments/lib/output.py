"""Writing results: atomic text and figures, and the markdown header every study result starts with."""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Write atomically (a reader, or a killed study, never leaves half a file); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def header(title: str, meta: Mapping[str, Any], started: float | None = None, train_seconds: float | None = None,
           clock: str = "CPU") -> str:
    """Markdown header: title, the run's provenance (revision, command, settings, machine) and, for studies that
    train, this invocation's wall time since `started` (time.perf_counter()) and the summed time of every training
    behind the table. `clock` says what train_seconds counts: "CPU" (process time) or "wall" (each training's own
    wall time, which exceeds its CPU time when trainings outnumber the cores)."""
    from experiments.lib.provenance import header_lines

    lines = [f"# {title}", "", *header_lines(meta)]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if train_seconds is None:
        lines.append(f"- finished: {date}")
    else:
        minutes = (time.perf_counter() - (started or time.perf_counter())) / 60
        lines.append(f"- finished: {date}; this invocation {minutes:.1f} min wall; the trainings behind the table "
                     f"took {train_seconds / 60:.1f} {clock}-min in all (one core each). They are cached in the CSV "
                     "next to this file: a rerun only trains what is missing.")
    return "\n".join(lines) + "\n"


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Lay out, write atomically (a reader never sees half a PNG) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        plt.close(fig)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (studies run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_band(ax: Any, x: Any, runs: Any, color: str, label: str) -> None:
    """The mean of `runs` [n_runs, len(x)] over x, with a +- one standard deviation band."""
    import numpy as np

    runs = np.asarray(runs, dtype=float)
    mean, std = runs.mean(axis=0), runs.std(axis=0)
    ax.plot(x, mean, color=color, label=label)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)

