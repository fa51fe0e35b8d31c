"""Which machine a latency table was made on, and a warning when a table is used on another one.

A table profiled (`flashsearch profile`) or fitted (`flashsearch latency fit`) on one CPU can rank genomes well on
another CPU yet be far off in seconds (the shipped Xeon table was 42% off on an AMD EPYC, where a table profiled
there was 8.8% off). So every table records its machine (`device`, `device_name`, `torch`, `threads`), its
predictions name that machine in `latency_source` (e.g. `lut:cpu[Intel(R) Xeon(R) Processor]`), and using a CPU
table on a different CPU warns once per table. A GPU table is compared only where a GPU is visible: predicting
a GPU from a CPU-only machine is a normal use of a table.
"""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path
from typing import Any, Mapping


class OtherMachineWarning(UserWarning):
    """A latency table made on another machine is predicting for this one."""


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def load_average() -> str:
    """1/5/15-minute load averages, recorded with timings so a reader can tell a busy machine's numbers."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def device_name(device: str) -> str | None:
    """This machine's name for `device`: the CPU model for "cpu", the GPU's name for anything else (None: no GPU)."""
    return cpu_name() if str(device).strip().lower() == "cpu" else _gpu_name()


def this_machine(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """What a table made here records about where it was made."""
    import torch

    return {"device": device, "device_name": device_name(device) or "unknown", "torch": torch.__version__,
            "threads": int(threads) if threads is not None else torch.get_num_threads()}


def machine_label(device: str, name: str | None) -> str:
    """`cpu[Intel(R) Xeon(R) Processor]`, or just `cpu` when the table does not say."""
    return f"{device}[{name}]" if name else str(device)


_WARNED: set[tuple[str, str, str]] = set()


def warn_if_other_machine(what: str, device: str, recorded_name: str | None, fix: str) -> None:
    """Warn once per (table, device, name) when a table's recorded machine is not this one.

    what: the table, e.g. "latency table cpu.json"; fix: how to make a table for this machine.
    """
    here = device_name(device)
    if here is None or (recorded_name and recorded_name.strip() == here.strip()):
        return
    key = (what, str(device), str(recorded_name))
    if key in _WARNED:
        return
    _WARNED.add(key)
    made_on = f"on {machine_label(device, recorded_name)}" if recorded_name else "without recording its machine"
    warnings.warn(f"{what} was made {made_on}, not on this machine ({here}); its seconds may be far off here: {fix}",
                  OtherMachineWarning, stacklevel=3)


def recorded_name(meta: Mapping[str, Any]) -> str | None:
    name = meta.get("device_name")
    return str(name) if name else None


__all__ = ["OtherMachineWarning", "cpu_name", "load_average", "device_name", "this_machine", "machine_label",
           "warn_if_other_machine", "recorded_name"]
