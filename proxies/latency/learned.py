"""Learned latency: a small non-negative ridge regression on physically meaningful genome features.

The model predicts seconds per decode step and multiplies by the number of steps:

    latency = N * sum_k coef_k * feature_k(genome, workload),   coef_k >= 0

Features (`FEATURES`) are what a decode step's cost scales with: a constant and the LM head (vocab x d_model);
for every operator type its layer count, count x d_model and count x d_model^2 (launch overhead, vectors, weight
matrices); attention's KV read (layers x kv width x mean context; sliding windows cap the context); the number
of token mixers in the early / middle / late third of the network (a position term; ~0 when position does not
matter, which the fit is free to find). Non-negative coefficients keep every prediction physical (more layers or
width never lower the latency), and the fit minimizes *relative* error (rows weighted by 1/seconds), the quantity
MAPE reports. Coefficients are saved as JSON data, never a pickle, with the training ranges; a genome outside
those ranges gets a one-line warning (or an error with strict=True).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from flashsearch.errors import FlashsearchError
from flashsearch import operators
from flashsearch.genome import Genome
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.machine import device_name as machine_name
from flashsearch.proxies.latency.machine import machine_label, recorded_name, warn_if_other_machine

if TYPE_CHECKING:
    from flashsearch.proxies.latency.validate import ValidationContext

MODEL_FORMAT = "flashsearch-learned/1"
DEFAULT_MODEL = "learned_cpu.json"          # shipped in proxies/latency/tables/ (fitted by `flashsearch latency validate`)
_RANGE_SLACK = 0.10                          # how far past the training range counts as "far outside"
# The operators the model format has feature columns for. Fixed (not the live registry), so a fitted model
# stays valid when a user registers an operator of their own; a genome using one is refused in `features`.
FEATURE_OPERATORS: tuple[str, ...] = ("attention", "swa", "mamba2", "deltanet", "gated_deltanet", "gla", "ffn")


def _feature_names() -> tuple[str, ...]:
    names = ["const", "vocab_x_d"]
    for op in FEATURE_OPERATORS:
        names += [f"n_{op}", f"n_{op}_x_d", f"n_{op}_x_d2"]
    names += ["attention_kv_x_ctx", "swa_kv_x_ctx", "mixers_early", "mixers_middle", "mixers_late"]
    return tuple(names)


FEATURES: tuple[str, ...] = _feature_names()


def features(genome: Genome, workload: Workload) -> np.ndarray:
    """Per-decode-step feature vector of `genome` under `workload`, in FEATURES order."""
    d = float(genome.d_model)
    mean_ctx = workload.prompt_len + (workload.decode_tokens - 1) / 2.0   # context averaged over the steps
    kv = float(genome.n_kv_heads * genome.head_dim)
    other = sorted(set(genome.layer_types) - set(FEATURE_OPERATORS))
    if other:
        raise FlashsearchError(f"learned latency model has no features for operator(s) {', '.join(other)}; "
                               "use latency=roofline or latency=measured for genomes that use them")
    f: dict[str, float] = {"const": 1.0, "vocab_x_d": genome.vocab_size * d}
    for op in FEATURE_OPERATORS:
        n = float(genome.count(op))
        f[f"n_{op}"], f[f"n_{op}_x_d"], f[f"n_{op}_x_d2"] = n, n * d, n * d * d
    f["attention_kv_x_ctx"] = genome.count("attention") * kv * mean_ctx
    window = float(operators.parse_options("swa", genome.options("swa")).window)
    p, n_dec = workload.prompt_len, workload.decode_tokens
    swa_ctx = float(np.minimum(p + np.arange(n_dec), window).mean())
    f["swa_kv_x_ctx"] = genome.count("swa") * kv * swa_ctx
    layers = genome.layer_types
    thirds = np.array_split(np.arange(len(layers)), 3)
    for name, idx in zip(("early", "middle", "late"), thirds):
        f[f"mixers_{name}"] = float(sum(operators.is_mixer(layers[i]) for i in idx))
    return np.array([f[k] for k in FEATURES], dtype=np.float64)


@dataclass(frozen=True)
class Measurement:
    """One training row: a genome, the workload it was timed under, and the measured seconds."""

    genome: Genome
    workload: Workload
    seconds: float
    device_name: str | None = None   # the machine it was measured on (CPU model / GPU name), when known


def read_measurements(path: str | Path) -> list[Measurement]:
    """Rows from CSV / parquet / JSON (records) with columns genome_json, prompt_len, decode_tokens, seconds
    (optional: batch, device, device_name = the machine that measured them)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise FlashsearchError(f"measurements file {p} not found")
    if p.suffix == ".parquet":
        df = pd.read_parquet(p)
    elif p.suffix == ".csv":
        df = pd.read_csv(p)
    elif p.suffix == ".json":
        df = pd.DataFrame(json.loads(p.read_text()))
    else:
        raise FlashsearchError(f"measurements file {p}: use .csv, .parquet or .json")
    missing = [c for c in ("genome_json", "prompt_len", "decode_tokens", "seconds") if c not in df.columns]
    if missing:
        raise FlashsearchError(f"measurements file {p} lacks column(s) {', '.join(missing)}")
    rows = []
    for r in df.to_dict("records"):
        wl = Workload(device=str(r.get("device", "cpu")), batch=int(r.get("batch", 1)),
                      prompt_len=int(r["prompt_len"]), decode_tokens=int(r["decode_tokens"]))
        name = r.get("device_name")
        name = str(name) if isinstance(name, str) and name.strip() else None  # pandas gives NaN for a blank cell
        rows.append(Measurement(Genome.from_json(str(r["genome_json"])), wl, float(r["seconds"]), name))
    return rows


def _ranges(rows: Sequence[Measurement]) -> dict[str, list[float]]:
    """Training ranges of what the features extrapolate badly in: width, depth, op counts, vocab, context."""
    cols: dict[str, list[float]] = {"d_model": [], "n_layers": [], "vocab_size": [], "last_context": []}
    cols.update({f"n_{op}": [] for op in FEATURE_OPERATORS})
    for m in rows:
        g, w = m.genome, m.workload
        cols["d_model"].append(g.d_model)
        cols["n_layers"].append(g.n_layers)
        cols["vocab_size"].append(g.vocab_size)
        cols["last_context"].append(w.prompt_len + w.decode_tokens - 1)
        for op in FEATURE_OPERATORS:
            cols[f"n_{op}"].append(g.count(op))
    return {k: [float(min(v)), float(max(v))] for k, v in cols.items()}


def _software() -> dict[str, Any]:
    """torch version and thread count of the fitting process (the measurements were timed with the same)."""
    try:
        import torch
    except ImportError:
        return {}
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    x, _ = nnls(a, b, maxiter=50 * a.shape[1])
    return x


class LearnedPredictor:
    """LatencyPredictor from a fitted model JSON (`fit` + `save`, or `flashsearch latency fit`).

    model: path of the model JSON, a shipped model name, or None for the shipped CPU model.
    device: the device asked about (None: the model's); a mismatch is an error. strict: raise instead of warning
    when a genome is far outside the training range.
    """

    # `flashsearch latency validate` measures a separate training split for it (never the genomes it is scored on).
    fits_on_measurements: ClassVar[bool] = True

    def __init__(self, model: str | Path | Mapping[str, Any] | None = None, device: str | None = None,
                 strict: bool = False):
        data = self._load(model)
        if list(data["features"]) != list(FEATURES):
            raise FlashsearchError("learned model was fitted with other features; re-fit it with this version")
        self.coef = np.asarray(data["coef"], dtype=np.float64)
        self.ranges: dict[str, list[float]] = {k: list(v) for k, v in data["ranges"].items()}
        self.device = str(data.get("device", "cpu"))
        self.n_train = int(data.get("n_train", 0))
        self.train_mape = float(data.get("train_mape", math.nan))
        self.meta: dict[str, Any] = dict(data.get("meta", {}))
        self.device_name = recorded_name(self.meta)
        self.model_name = "<dict>" if isinstance(model, Mapping) else str(model or DEFAULT_MODEL)
        self.strict = bool(strict)
        if device is not None and str(device).strip().lower() != self.device.lower():
            raise FlashsearchError(f"learned latency model was fitted on {self.device!r} measurements, not "
                                   f"{device!r}; fit one on {device!r} measurements (flashsearch latency fit)")
        self.source = f"learned:{machine_label(self.device, self.device_name)}"

    @staticmethod
    def _load(model: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
        if isinstance(model, Mapping):
            data = dict(model)
        else:
            key = str(model) if model is not None else DEFAULT_MODEL
            path = Path(key).expanduser()
            shipped = resources.files("flashsearch.proxies.latency").joinpath("tables").joinpath(key)
            if path.is_file():
                text = path.read_text()
            elif shipped.is_file():
                text = shipped.read_text()
            else:
                raise FlashsearchError(f"learned latency model {key!r} not found; fit one with "
                                       "`flashsearch latency fit MEASUREMENTS --out model.json`")
            data = json.loads(text)
        if data.get("format") != MODEL_FORMAT:
            raise FlashsearchError(f"learned latency model has format {data.get('format')!r}, "
                                   f"expected {MODEL_FORMAT!r}")
        return data

    # ---- fitting ------------------------------------------------------------------------------------------------
    @classmethod
    def for_validation(cls, ctx: ValidationContext) -> LearnedPredictor:
        """For `flashsearch latency validate`: fitted on the run's training split, saved to its --out folder."""
        if len(ctx.train) < 3:
            raise FlashsearchError(f"learned needs at least 3 training measurements, got {len(ctx.train)}: "
                                   "use --n-train 3 or more")
        model = cls.fit([Measurement(g, ctx.workload, s, ctx.measured_on) for g, s in ctx.train], device="cpu",
                        meta={"what": "fitted by flashsearch latency validate on its training split"})
        if ctx.out is not None:
            model.save(ctx.out / "learned_cpu.json")
        return model

    @classmethod
    def fit(cls, rows: Iterable[Measurement], alpha: float = 1e-3, device: str | None = None,
            meta: Mapping[str, Any] | None = None) -> "LearnedPredictor":
        """Non-negative ridge fit of per-step seconds, minimizing relative error. alpha is relative to the
        column-normalized problem (features scaled to max 1), so it does not depend on units."""
        rows = list(rows)
        if len(rows) < 3:
            raise FlashsearchError(f"learned: need at least 3 measurements to fit, got {len(rows)}")
        if any(not (m.seconds > 0 and math.isfinite(m.seconds)) for m in rows):
            raise FlashsearchError("learned: every measured seconds value must be positive and finite")
        x = np.stack([features(m.genome, m.workload) for m in rows])                  # [R, F] per step
        y = np.array([m.seconds / m.workload.decode_tokens for m in rows])            # [R] seconds per step
        scale = np.abs(x).max(axis=0)
        scale[scale == 0] = 1.0                                                       # unused feature: coef 0
        a = (x / scale) / y[:, None]                                                  # relative-error rows
        a_aug = np.vstack([a, math.sqrt(alpha * len(rows)) * np.eye(x.shape[1])])
        b_aug = np.concatenate([np.ones(len(rows)), np.zeros(x.shape[1])])
        coef = _nnls(a_aug, b_aug) / scale
        pred = x @ coef
        device = device or rows[0].workload.device
        # The machine the measurements were made on; rows that do not say were measured here (validate fits on
        # its own fresh measurements).
        names = sorted({m.device_name for m in rows if m.device_name})
        if not names and machine_name(device):
            names = [str(machine_name(device))]
        data = {
            "format": MODEL_FORMAT,
            "device": device,
            "features": list(FEATURES),
            "coef": coef.tolist(),
            "ranges": _ranges(rows),
            "n_train": len(rows),
            "alpha": alpha,
            "train_mape": float(np.mean(np.abs(pred - y) / y)),
            "meta": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     **({"device_name": " + ".join(names)} if names else {}), **_software(), **(meta or {})},
        }
        return cls(data)

    def to_dict(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "device": self.device, "features": list(FEATURES),
                "coef": self.coef.tolist(), "ranges": self.ranges, "n_train": self.n_train,
                "train_mape": self.train_mape, "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return p

    def coefficients(self) -> dict[str, float]:
        return dict(zip(FEATURES, self.coef.tolist()))

    # ---- prediction ---------------------------------------------------------------------------------------------
    def predict(self, genome: Genome, workload: Workload) -> float:
        warn_if_other_machine(f"learned latency model {self.model_name}", self.device, self.device_name,
                              "measure and fit this machine with `flashsearch latency validate --predictor learned "
                              "--out DIR` and set latency.model=DIR/learned_cpu.json")
        self._check_range(genome, workload)
        return float(features(genome, workload) @ self.coef) * workload.decode_tokens

    def _check_range(self, genome: Genome, workload: Workload) -> None:
        values = {"d_model": genome.d_model, "n_layers": genome.n_layers, "vocab_size": genome.vocab_size,
                  "last_context": workload.prompt_len + workload.decode_tokens - 1}
        values.update({f"n_{op}": genome.count(op) for op in FEATURE_OPERATORS})
        out = []
        for k, v in values.items():
            lo, hi = self.ranges.get(k, [v, v])
            span = max(hi - lo, 1.0)
            if v < lo - _RANGE_SLACK * span or v > hi + _RANGE_SLACK * span:
                out.append(f"{k}={v} (trained {lo:g}..{hi:g})")
        if out:
            msg = f"[flashsearch learned] genome far outside the training range: {', '.join(out)}"
            if self.strict:
                raise FlashsearchError(msg + "; fit on measurements that cover it, or use strict=False")
            warnings.warn(msg, LearnedRangeWarning, stacklevel=3)


class LearnedRangeWarning(UserWarning):
    """A learned-predictor prediction outside the range it was fitted on."""


__all__ = ["LearnedPredictor", "LearnedRangeWarning", "Measurement", "FEATURES", "features", "read_measurements"]
