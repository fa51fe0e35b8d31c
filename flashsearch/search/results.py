"""A worker's result as the study stores it: checked (finite loss and latency), extras as plain JSON."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

RESERVED = ("loss", "latency", "latency_source")


def check_result(result: Any) -> str | None:
    """None if `result` is a usable {"loss", "latency", "latency_source", ...}; else why not (one line)."""
    if not isinstance(result, Mapping):
        return f"evaluator returned {type(result).__name__}, expected a dict with loss, latency, latency_source"
    missing = [k for k in RESERVED if k not in result]
    if missing:
        return f"evaluator result lacks {', '.join(missing)}"
    for key in ("loss", "latency"):
        try:
            value = float(result[key])
        except (TypeError, ValueError):
            return f"evaluator returned a non-numeric {key}: {result[key]!r}"
        if not math.isfinite(value):
            return f"non-finite {key} ({value})"
    return None


def extras(result: Mapping[str, Any]) -> dict[str, Any]:
    """Everything but loss/latency/latency_source; a nested "metrics" mapping is merged in (both styles work)."""
    out = {k: v for k, v in result.items() if k not in RESERVED and k != "metrics"}
    nested = result.get("metrics")
    if isinstance(nested, Mapping):
        out.update(nested)
    elif nested is not None:
        out["metrics"] = nested
    return out


def jsonable(value: Any) -> Any:
    """Convert metrics to plain JSON types (numpy scalars, tuples, NaN -> None) for the study storage."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return jsonable(tolist())
    return json.loads(json.dumps(value, default=str))


__all__ = ["check_result", "extras", "jsonable", "RESERVED"]
