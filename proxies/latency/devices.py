"""GPU device profiles for the roofline latency predictor.

Profiles are data: one YAML file per device in proxies/latency/devices/ (installed as package data), each with its
sources. `load_device("h100")` reads a shipped profile; `load_device("path/to/my_gpu.yaml")` reads a user's own
file with the same fields, so a new device needs no code.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from flashsearch.errors import FlashsearchError

# Bytes per element, with the spellings users and torch use.
DTYPE_BYTES: Mapping[str, int] = MappingProxyType({"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1})
DTYPE_ALIASES: Mapping[str, str] = MappingProxyType(
    {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
     "float8": "fp8", "fp8_e4m3": "fp8", "e4m3": "fp8"})

_REQUIRED = ("name", "memory_bandwidth_gbs", "peak_tflops", "memory_efficiency", "compute_efficiency",
             "launch_overhead_us", "eager_launch_overhead_us")


def canonical_dtype(dtype: str) -> str:
    key = str(dtype).strip().lower().removeprefix("torch.")
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise FlashsearchError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
    return key


@dataclass(frozen=True)
class DeviceProfile:
    """What the roofline needs to know about a GPU.

    memory_bandwidth_gbs / peak_tflops: datasheet peaks. memory_efficiency / compute_efficiency: the share of
    those peaks that batch-1 decode kernels reach. launch_overhead_us: fixed cost per kernel under CUDA graphs;
    eager_launch_overhead_us: the same without graphs. operator_overhead_us: a fixed cost per operator, fitted to
    published decode latencies (experiments/roofline_fit); 0 in profiles that predate it.
    """

    name: str
    description: str
    memory_bandwidth_gbs: float
    peak_tflops: Mapping[str, float]
    memory_efficiency: float
    compute_efficiency: float
    launch_overhead_us: float
    eager_launch_overhead_us: float
    sources: tuple[str, ...] = ()
    operator_overhead_us: float = 0.0     # fixed cost per operator (layer or head) beyond its kernels' launches

    def bandwidth(self) -> float:
        """Achievable bytes/s."""
        return self.memory_bandwidth_gbs * 1e9 * self.memory_efficiency

    def flops(self, dtype: str) -> float:
        """Achievable FLOP/s for `dtype`."""
        dt = canonical_dtype(dtype)
        if dt not in self.peak_tflops:
            raise FlashsearchError(f"device {self.name!r} has no {dt} peak in its profile "
                                   f"(has {', '.join(sorted(self.peak_tflops))}); pick another dtype")
        return float(self.peak_tflops[dt]) * 1e12 * self.compute_efficiency

    def launch_seconds(self, cuda_graphs: bool = True) -> float:
        return (self.launch_overhead_us if cuda_graphs else self.eager_launch_overhead_us) * 1e-6


def _profile_from_dict(data: Any, where: str) -> DeviceProfile:
    if not isinstance(data, Mapping):
        raise FlashsearchError(f"device profile {where} must be a YAML mapping")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise FlashsearchError(f"device profile {where} is missing {', '.join(missing)}")
    peaks = data["peak_tflops"]
    if not isinstance(peaks, Mapping) or not peaks:
        raise FlashsearchError(f"device profile {where}: peak_tflops must map dtype -> TFLOP/s")
    try:
        profile = DeviceProfile(
            name=str(data["name"]),
            description=str(data.get("description", data["name"])),
            memory_bandwidth_gbs=float(data["memory_bandwidth_gbs"]),
            peak_tflops=MappingProxyType({canonical_dtype(k): float(v) for k, v in peaks.items()}),
            memory_efficiency=float(data["memory_efficiency"]),
            compute_efficiency=float(data["compute_efficiency"]),
            launch_overhead_us=float(data["launch_overhead_us"]),
            eager_launch_overhead_us=float(data["eager_launch_overhead_us"]),
            sources=tuple(str(s) for s in data.get("sources", ()) or ()),
            operator_overhead_us=float(data.get("operator_overhead_us", 0.0)),
        )
    except (TypeError, ValueError) as exc:
        raise FlashsearchError(f"device profile {where}: a number field is not a number ({exc})") from None
    positive = [profile.memory_bandwidth_gbs, *profile.peak_tflops.values(), profile.launch_overhead_us + 1.0,
                profile.eager_launch_overhead_us + 1.0]
    if not all(math.isfinite(v) and v > 0 for v in positive) or profile.launch_overhead_us < 0 \
            or profile.eager_launch_overhead_us < 0 or not (math.isfinite(profile.operator_overhead_us)
                                                            and profile.operator_overhead_us >= 0):
        raise FlashsearchError(f"device profile {where}: bandwidth/peaks must be > 0 and launch_overhead_us, "
                               "eager_launch_overhead_us and operator_overhead_us >= 0")
    for eff in ("memory_efficiency", "compute_efficiency"):
        if not 0.0 < getattr(profile, eff) <= 1.0:
            raise FlashsearchError(f"device profile {where}: {eff} must be in (0, 1]")
    return profile


def _shipped_dir() -> Any:
    return resources.files("flashsearch.proxies.latency").joinpath("devices")


def known_devices() -> tuple[str, ...]:
    """Names of the shipped profiles."""
    return tuple(sorted(p.name.removesuffix(".yaml") for p in _shipped_dir().iterdir()
                        if p.name.endswith(".yaml")))


def device_for_gpu(gpu_name: str) -> str | None:
    """The shipped profile a GPU's name (torch.cuda.get_device_name) is one of, e.g. "NVIDIA H100 80GB HBM3" ->
    "h100"; None for a GPU without a profile."""
    name = gpu_name.lower()
    return next((known for known in known_devices() if known in name), None)


@functools.lru_cache(maxsize=None)
def load_device(name_or_path: str) -> DeviceProfile:
    """A shipped profile by name (case-insensitive), or a profile YAML file by path."""
    key = str(name_or_path).strip()
    if key.endswith((".yaml", ".yml")):
        path = Path(key).expanduser()
        if not path.is_file():
            raise FlashsearchError(f"device profile file {key!r} does not exist")
        return _profile_from_dict(yaml.safe_load(path.read_text()), str(path))
    entry = _shipped_dir().joinpath(f"{key.lower()}.yaml")
    if not entry.is_file():
        raise FlashsearchError(f"unknown device {name_or_path!r}; known devices: {', '.join(known_devices())} "
                               "(or give the path of a device profile .yaml)")
    return _profile_from_dict(yaml.safe_load(entry.read_text()), f"{key.lower()}.yaml")
