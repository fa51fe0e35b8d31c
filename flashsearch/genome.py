"""Genome: one candidate architecture, immutable, with a canonical JSON form and a stable id.

A genome is the full-size model a search proposes: a per-layer operator list plus width, heads and
per-operator options. Proxies may train a width-scaled copy (`Genome.scaled`), but the genome itself
always describes the model that would be deployed, and latency is predicted for it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from flashsearch import operators
from flashsearch.errors import FlashsearchError


def canonical_operator(name: str, where: str = "layer_types") -> str:
    """Map an operator name, letter or alias to its canonical name (flashsearch.operators, the one registry),
    or raise a one-line error naming the choices."""
    return operators.canonical(name, where)


def _freeze(value: Any) -> Any:
    """Recursively turn dicts into read-only mappings and lists into tuples, so a Genome is truly immutable."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Inverse of _freeze, for JSON: mappings -> dicts (sorted keys), tuples -> lists."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in sorted(value.items())}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Genome:
    """A full-size hybrid language model architecture.

    layer_types: operator per residual layer, e.g. ("deltanet", "ffn", "mamba2", "ffn", ...).
    d_model: hidden size. n_heads / n_kv_heads / head_dim: attention-style heads (GQA when n_kv_heads < n_heads);
    DeltaNet-family and GLA use n_heads x head_dim too. ffn_ratio: SwiGLU hidden = round(ffn_ratio * d_model).
    op_options: per-operator settings, e.g. {"swa": {"window": 512}, "mamba2": {"d_state": 128}}; the operator
    library validates the keys (flashsearch.kernels).
    """

    layer_types: tuple[str, ...]
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_ratio: float = 3.0
    vocab_size: int = 131072
    op_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", tuple(canonical_operator(t) for t in self.layer_types))
        object.__setattr__(self, "ffn_ratio", float(self.ffn_ratio))
        opts = {}
        for op, o in dict(self.op_options or {}).items():
            if not isinstance(o, Mapping):
                raise FlashsearchError(f"op_options.{op} must be a mapping of option -> value, got {o!r}")
            name = canonical_operator(op, where="op_options")
            operators.spec(name).parse_options(o)          # unknown or ill-typed options: one line, here
            opts[name] = o
        object.__setattr__(self, "op_options", _freeze(opts))
        self._validate()

    def _validate(self) -> None:
        def bad(msg: str) -> FlashsearchError:
            return FlashsearchError(f"invalid genome: {msg}")

        if not self.layer_types:
            raise bad("layer_types is empty; give at least one token mixer, e.g. [attention, ffn]")
        if not any(operators.is_mixer(t) for t in self.layer_types):
            raise bad(f"layer_types has no token mixer (only ffn); add one of {', '.join(operators.mixers())}")
        for name in ("d_model", "n_heads", "n_kv_heads", "head_dim", "vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise bad(f"{name} must be a positive integer, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise bad(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}; "
                      "pick n_kv_heads that divides n_heads")
        if not (math.isfinite(self.ffn_ratio) and self.ffn_ratio > 0):
            raise bad(f"ffn_ratio must be a positive number, got {self.ffn_ratio!r}")
        # Options for operators the genome does not use are kept (a space shares one op_options block);
        # they were checked against each operator's Options above. Checks that need the genome's sizes
        # (e.g. mamba2 head_dim dividing expand * d_model) happen when the operator is built.

    # ---- derived views -------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layer_types)

    @property
    def n_mixers(self) -> int:
        return sum(operators.is_mixer(t) for t in self.layer_types)

    def count(self, op: str) -> int:
        return sum(t == op for t in self.layer_types)

    def options(self, op: str) -> Mapping[str, Any]:
        """User options for `op` as given (typed, with defaults: flashsearch.operators.parse_options)."""
        return self.op_options.get(op, MappingProxyType({}))

    @property
    def ffn_hidden(self) -> int:
        return int(round(self.ffn_ratio * self.d_model))

    # ---- serialization ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "layer_types": list(self.layer_types),
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "ffn_ratio": self.ffn_ratio,
            "vocab_size": self.vocab_size,
            "op_options": _thaw(self.op_options),
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace; equal genomes give byte-identical strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        """Stable 12-hex-digit id from the canonical JSON (same genome -> same id, across runs and machines)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def __hash__(self) -> int:
        return hash(self.to_json())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "genome") -> "Genome":
        known = {"layer_types", "d_model", "n_heads", "n_kv_heads", "head_dim", "ffn_ratio", "vocab_size",
                 "op_options"}
        data = dict(data)
        unknown = sorted(set(data) - known)
        if unknown:
            raise FlashsearchError(f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(sorted(known))}")
        missing = [k for k in ("layer_types", "d_model") if k not in data]
        if missing:
            raise FlashsearchError(f"missing key(s) {', '.join(missing)} in {where}")
        if "n_heads" not in data:
            hd = int(data.get("head_dim", 64))
            data.setdefault("head_dim", hd)
            data["n_heads"] = max(1, int(data["d_model"]) // hd)
        data.setdefault("head_dim", max(1, int(data["d_model"]) // int(data["n_heads"])))
        data.setdefault("n_kv_heads", data["n_heads"])
        layer_types = data["layer_types"]
        if isinstance(layer_types, str) or not isinstance(layer_types, (list, tuple)):
            raise FlashsearchError(f"layer_types in {where} must be a list of operator names, got {layer_types!r}")
        data["layer_types"] = tuple(canonical_operator(t, where=f"{where}.layer_types") for t in layer_types)
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "Genome":
        return cls.from_dict(json.loads(text))

    # ---- transformations ---------------------------------------------------------------------------------
    def with_layers(self, layer_types: tuple[str, ...]) -> "Genome":
        return replace(self, layer_types=tuple(layer_types))

    def with_width(self, d_model: int) -> "Genome":
        """Same architecture at another hidden size: head_dim kept, heads = d_model // head_dim (GQA group kept)."""
        return self.scaled(d_model, self.head_dim)

    def scaled(self, d_model: int, head_dim: int, vocab_size: int | None = None) -> "Genome":
        """A width-scaled copy (same layer_types) for cheap proxies.

        heads = max(1, d_model // head_dim); the KV group size (n_heads / n_kv_heads) is kept as closely as the
        new head count allows, so GQA models stay GQA. Operator options that are absolute sizes (mamba2 head_dim,
        d_state) are left to the caller to override through op_options.
        """
        n_heads = max(1, d_model // head_dim)
        group = max(1, self.n_heads // self.n_kv_heads)
        n_kv = max(1, n_heads // group)
        while n_heads % n_kv:
            n_kv -= 1
        return replace(self, d_model=int(d_model), head_dim=int(head_dim), n_heads=n_heads, n_kv_heads=n_kv,
                       vocab_size=self.vocab_size if vocab_size is None else int(vocab_size))

    def with_options(self, op: str, **options: Any) -> "Genome":
        """Copy with `options` merged into op_options[op]."""
        merged = {k: _thaw(v) for k, v in self.op_options.items()}
        merged[op] = {**merged.get(op, {}), **options}
        return replace(self, op_options=merged)

    def summary(self) -> str:
        """Compact layer pattern in the operators' letters, e.g. 'D F M2 F A F' (letters parse back as
        layer_types)."""
        return " ".join(operators.letter(t) for t in self.layer_types)
