"""Look-up-table latency: sum per-operator decode-step costs profiled on a device by `flashsearch profile`.

    latency = sum_{s=0}^{N-1} [ sum_layers t_op(d_model, P + s) + t_head(vocab, d_model) ]

t_op(d, c) is the profiled seconds of one layer's decode step at width d with c tokens in its state,
interpolated linearly in width and in context between the profiled grid points (linearly extrapolated from the
edge segment outside it, with a warning); t_head is the embedding + final norm + LM head + argmax per step,
interpolated in vocab and width. The N context values are evaluated as one numpy array per distinct operator, so
an 8k-token prediction costs a few array ops, not 8k Python iterations per layer.

The table says which device it was profiled on; asking for another device is an error, because a CPU table says
nothing about an H100 (use `roofline` to predict a GPU without a table profiled on it). It also names the machine
(CPU model, torch, threads): `latency_source` carries it, and a CPU table used on another CPU warns once
(machine.py), because its seconds can be far off there even when its ranking holds.
"""

from __future__ import annotations

import json
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome, canonical_operator
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.machine import machine_label, recorded_name, warn_if_other_machine
from flashsearch.proxies.latency.profile import TABLE_FORMAT, ProfileRecipe

if TYPE_CHECKING:
    from flashsearch.proxies.latency.validate import ValidationContext

DEFAULT_TABLE = "cpu.json"   # shipped in proxies/latency/tables/, profiled on the development CPU (see its meta)


class LutExtrapolationWarning(UserWarning):
    """A prediction used the table outside its profiled width / context / vocab range."""


def _shipped(name: str) -> Any:
    return resources.files("flashsearch.proxies.latency").joinpath("tables").joinpath(name)


def load_table(table: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A LUT dict from a path, a shipped table name (e.g. "cpu.json"), an in-memory dict, or None (default)."""
    if isinstance(table, Mapping):
        data, where = dict(table), "<dict>"
    else:
        key = str(table) if table is not None else DEFAULT_TABLE
        path = Path(key).expanduser()
        if path.is_file():
            text, where = path.read_text(), str(path)
        elif _shipped(key).is_file():
            text, where = _shipped(key).read_text(), f"shipped table {key}"
        else:
            raise FlashsearchError(f"latency table {key!r} not found; give a path written by `flashsearch profile "
                                   "--out FILE` or a shipped table name (cpu.json)")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FlashsearchError(f"latency table {where} is not valid JSON ({e})") from None
    if data.get("format") != TABLE_FORMAT:
        raise FlashsearchError(f"latency table {where} has format {data.get('format')!r}, expected {TABLE_FORMAT!r}")
    for k in ("meta", "widths", "contexts", "vocabs", "ops", "head"):
        if k not in data:
            raise FlashsearchError(f"latency table {where} is missing {k!r}")
    return data


def _interp(x: np.ndarray | float, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation along the last axis of fp, linear extrapolation from the edge segments.

    xp [K] increasing grid, fp [..., K]; x scalar or [M] -> [..., M] (or [...] for a scalar x).
    """
    x_arr = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if xp.shape[0] == 1:
        out = np.repeat(fp[..., :1], x_arr.shape[0], axis=-1)
    else:
        i = np.clip(np.searchsorted(xp, x_arr, side="right") - 1, 0, xp.shape[0] - 2)  # segment of each x
        x0, x1 = xp[i], xp[i + 1]
        t = (x_arr - x0) / (x1 - x0)                                                 # <0 or >1 = extrapolate
        out = fp[..., i] * (1.0 - t) + fp[..., i + 1] * t
    return out if np.ndim(x) else out[..., 0]


class LutPredictor:
    """LatencyPredictor summing a profiled per-operator table (`flashsearch profile`) over layers and steps.

    table: path of a table JSON, a shipped table name, or None for the shipped CPU table.
    device: the device the prediction is for (None: the table's); a mismatch with the table is an error.
    """

    def __init__(self, table: str | Path | Mapping[str, Any] | None = None, device: str | None = None):
        self.table = load_table(table)
        self.table_name = "<dict>" if isinstance(table, Mapping) else str(table or DEFAULT_TABLE)
        meta = self.table["meta"]
        self.device = str(meta.get("device", "unknown"))
        if device is not None and str(device).strip().lower() != self.device.lower():
            raise FlashsearchError(
                f"latency table was profiled on {self.device!r} ({meta.get('device_name', '?')}), not {device!r}; "
                f"profile {device!r} with `flashsearch profile --out FILE` on it and pass latency.table=FILE, or "
                "use latency=roofline for a device you cannot profile")
        self.device_name = recorded_name(meta)
        self.source = f"lut:{machine_label(self.device, self.device_name)}"
        self.recipe = ProfileRecipe.from_dict(meta["recipe"]) if "recipe" in meta else None
        self._widths = np.asarray(self.table["widths"], dtype=np.float64)
        self._contexts = np.asarray(self.table["contexts"], dtype=np.float64)
        self._vocabs = np.asarray(self.table["vocabs"], dtype=np.float64)
        self._ops = {canonical_operator(op, where="latency table"): np.asarray(v, dtype=np.float64)
                     for op, v in self.table["ops"].items()}                        # op -> [W, C]
        self._head = np.asarray(self.table["head"], dtype=np.float64)                # [V, W]
        for op, arr in self._ops.items():
            if arr.shape != (self._widths.size, self._contexts.size):
                raise FlashsearchError(f"latency table: ops.{op} has shape {arr.shape}, expected "
                                       f"[{self._widths.size} widths, {self._contexts.size} contexts]")
        if self._head.shape != (self._vocabs.size, self._widths.size):
            raise FlashsearchError("latency table: head must be [vocabs x widths]")

    def __repr__(self) -> str:
        return f"LutPredictor(device={self.device!r}, ops={sorted(self._ops)})"

    @classmethod
    def for_validation(cls, ctx: ValidationContext) -> LutPredictor:
        """For `flashsearch latency validate` (CPU decoding): the --table given, else the shipped CPU table."""
        return cls(table=ctx.table, device="cpu")

    # ---- public API -----------------------------------------------------------------------------------------
    def predict(self, genome: Genome, workload: Workload) -> float:
        return float(sum(self.breakdown(genome, workload).values()))

    def breakdown(self, genome: Genome, workload: Workload) -> dict[str, float]:
        """Seconds per operator type (all its layers, all steps) and for the head ("embedding+lm_head")."""
        self._check(genome, workload)
        n, p, d = workload.decode_tokens, workload.prompt_len, float(genome.d_model)
        contexts = p + np.arange(n, dtype=np.float64)                                # context before each step
        self._warn_outside(genome, p, n)
        out: dict[str, float] = {}
        for op in dict.fromkeys(genome.layer_types):
            per_context = _interp(d, self._widths, self._ops[op].T)                 # [C] at this width
            steps = _interp(contexts, self._contexts, per_context)                   # [N]
            out[op] = float(np.clip(steps, 0.0, None).sum()) * genome.count(op)
        head_w = _interp(d, self._widths, self._head)                                # [V]
        head = float(_interp(float(genome.vocab_size), self._vocabs, head_w))
        out["embedding+lm_head"] = max(head, 0.0) * n
        return out

    # ---- checks -------------------------------------------------------------------------------------------------
    def _check(self, genome: Genome, workload: Workload) -> None:
        if str(workload.device).strip().lower() != self.device.lower():
            raise FlashsearchError(
                f"workload.device={workload.device!r} but the latency table was profiled on {self.device!r}; "
                f"set workload.device={self.device} or give a table profiled on {workload.device!r}")
        if workload.batch != 1:
            raise FlashsearchError(f"the latency table is for batch 1, workload.batch={workload.batch}")
        warn_if_other_machine(f"latency table {self.table_name}", self.device, self.device_name,
                              "profile this machine with `flashsearch profile --out my_table.json` and set "
                              "latency.table=my_table.json")
        missing = sorted(set(genome.layer_types) - set(self._ops))
        if missing:
            raise FlashsearchError(f"latency table has no entry for operator(s) {', '.join(missing)} (it has "
                                   f"{', '.join(sorted(self._ops))}); re-profile with --ops including them")

    def _warn_outside(self, genome: Genome, prompt_len: int, decode_tokens: int) -> None:
        issues = []
        w0, w1 = self._widths[0], self._widths[-1]
        if not w0 <= genome.d_model <= w1:
            issues.append(f"d_model {genome.d_model} outside profiled widths {w0:.0f}..{w1:.0f}")
        last = prompt_len + decode_tokens - 1
        if last > self._contexts[-1] or prompt_len < self._contexts[0]:
            issues.append(f"contexts {prompt_len}..{last} outside profiled {self._contexts[0]:.0f}.."
                          f"{self._contexts[-1]:.0f}")
        if not self._vocabs[0] <= genome.vocab_size <= self._vocabs[-1]:
            issues.append(f"vocab {genome.vocab_size} outside profiled {self._vocabs[0]:.0f}..{self._vocabs[-1]:.0f}")
        if self.recipe is not None:
            r = self.recipe
            ref = r.genome(genome.layer_types, genome.d_model, genome.vocab_size)
            diffs = [f"{k} {getattr(genome, k)} != {getattr(ref, k)}" for k in
                     ("head_dim", "n_heads", "n_kv_heads", "ffn_ratio") if getattr(genome, k) != getattr(ref, k)]
            for op in set(genome.layer_types):
                mine = {k: v for k, v in genome.options(op).items()}
                theirs = dict(r.op_options.get(op, {}))
                if mine != theirs:
                    diffs.append(f"op_options.{op} {mine} != profiled {theirs}")
            if diffs:
                issues.append("genome differs from the profiled recipe: " + "; ".join(diffs))
        if issues:
            warnings.warn(f"[flashsearch lut] extrapolating: {' | '.join(issues)}", LutExtrapolationWarning,
                          stacklevel=3)


__all__ = ["LutPredictor", "LutExtrapolationWarning", "load_table", "DEFAULT_TABLE"]
