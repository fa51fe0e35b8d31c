"""Search spaces: the flat parameters a sampler sees, and how they decode to a Genome.

Samplers never see layers. A space turns a dict of categorical parameters into a Genome (`decode`), proposes
random points (`sample`), changes exactly one factor (`mutate`, Algorithm 1 of Nemotron-Flash), and enforces
its limits (`repair`). Two spaces ship:

- `staged`  the Nemotron-Flash space: 3 stages, each repeating one block type. A block type mixes at most two
            mixers `a` and `b` with ratio b:a in {0:1, 1:1, 1:2, 1:3}; every mixer is followed by 0-2 FFNs;
            at most `max_operators` operators (mixers + FFNs) in total.
- `layerwise` a free per-layer operator list with depth bounds.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from flashsearch.config import SpaceConfig
from flashsearch.errors import FlashsearchError
from flashsearch import operators
from flashsearch.genome import Genome, canonical_operator

Params = dict[str, Any]

RATIOS: tuple[str, ...] = ("0:1", "1:1", "1:2", "1:3")


@dataclass(frozen=True)
class ArchDefaults:
    """What every genome of a space shares besides its layers and width."""

    head_dim: int = 128
    kv_group: int = 4                 # n_heads / n_kv_heads (GQA group size)
    ffn_ratio: float = 3.0
    vocab_size: int = 131072
    op_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("head_dim", "kv_group", "ffn_ratio", "vocab_size"):
            if not getattr(self, name) > 0:
                raise FlashsearchError(f"space.{name} must be positive, got {getattr(self, name)}")

    def genome(self, layer_types: Sequence[str], d_model: int) -> Genome:
        n_heads = max(1, d_model // self.head_dim)
        n_kv = max(1, n_heads // self.kv_group)
        while n_heads % n_kv:
            n_kv -= 1
        return Genome(layer_types=tuple(layer_types), d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv,
                      head_dim=self.head_dim, ffn_ratio=self.ffn_ratio, vocab_size=self.vocab_size,
                      op_options=self.op_options)


class SearchSpace(ABC):
    name: str
    widths: tuple[int, ...]
    arch: ArchDefaults

    @abstractmethod
    def distributions(self) -> dict[str, BaseDistribution]:
        """Flat parameters and their choices, in a fixed order."""

    @abstractmethod
    def decode(self, params: Mapping[str, Any]) -> Genome: ...

    @abstractmethod
    def encode(self, genome: Genome) -> Params | None:
        """Parameters that decode to `genome`, or None when the genome is not expressible in this space."""

    @abstractmethod
    def repair(self, params: Mapping[str, Any]) -> Params:
        """Make params respect the space's limits; idempotent, and a no-op on valid params."""

    @abstractmethod
    def factors(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        """Parameters whose change alters the decoded genome (what `mutate` may pick), width excluded."""

    def sample(self, rng: random.Random) -> Params:
        params = {name: _choices(d)[rng.randrange(len(_choices(d)))] for name, d in self.distributions().items()}
        return self.repair(params)

    def mutate(self, params: Mapping[str, Any], rng: random.Random, *, include_width: bool = True) -> tuple[Params, str]:
        """Child differing from `params` in exactly one factor (returned by name). Not repaired: call repair()."""
        factors = list(self.factors(params))
        if include_width and len(self.widths) > 1:
            factors.append("d_model")
        factors = [f for f in factors if len(_choices(self.distributions()[f])) > 1]
        if not factors:
            raise FlashsearchError(f"search space {self.name!r} has nothing to mutate; widen its choices")
        factor = factors[rng.randrange(len(factors))]
        options = [v for v in _choices(self.distributions()[factor]) if v != params[factor]]
        child = dict(params)
        child[factor] = options[rng.randrange(len(options))]
        return child, factor

    @abstractmethod
    def cheapest(self) -> list[Params]:
        """Candidates that bound the space's lowest latency from below (one per mixer, fewest layers, min width).

        Used to refuse a latency target that no genome of the space can meet, before any training starts.
        """

    def with_width(self, params: Mapping[str, Any], d_model: int) -> Params:
        if d_model not in self.widths:
            raise FlashsearchError(f"width {d_model} is not one of the space's widths {list(self.widths)}")
        return {**params, "d_model": d_model}

    def validate(self, params: Mapping[str, Any]) -> None:
        """Raise FlashsearchError if params have unknown names or values outside the choices."""
        dists = self.distributions()
        unknown = sorted(set(params) - set(dists))
        missing = sorted(set(dists) - set(params))
        if unknown or missing:
            raise FlashsearchError(f"params for space {self.name!r}: unknown {unknown}, missing {missing}")
        for k, d in dists.items():
            if params[k] not in _choices(d):
                raise FlashsearchError(f"param {k}={params[k]!r} is not one of {list(_choices(d))}")


def _choices(d: BaseDistribution) -> tuple[Any, ...]:
    if isinstance(d, CategoricalDistribution):
        return tuple(d.choices)
    if isinstance(d, IntDistribution):
        return tuple(range(d.low, d.high + 1, d.step))
    raise TypeError(f"unsupported distribution {d!r}")


# --------------------------------------------------------------------------------------------------------
# staged (Nemotron-Flash)
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StagedSpace(SearchSpace):
    """Stages x (mixer a, mixer b, ratio b:a, FFNs per mixer, blocks per stage) + d_model.

    A block with ratio b:a = 1:3 is [b, a, a, a], each mixer followed by `ffn` FFNs. With ratio 0:1 the block is
    [a] and `b` is a dormant gene: it is kept in the params so a later ratio mutation can activate it.
    """

    operators: tuple[str, ...] = ("attention", "mamba2", "deltanet")
    widths: tuple[int, ...] = (1024, 1280, 1536, 1792, 2048, 2304, 2560)
    n_stages: int = 3
    ratios: tuple[str, ...] = RATIOS
    ffn_choices: tuple[int, ...] = (0, 1, 2)
    max_blocks_per_stage: int = 4
    max_operators: int = 30
    arch: ArchDefaults = field(default_factory=ArchDefaults)
    name: str = "staged"

    def __post_init__(self) -> None:
        ops = tuple(canonical_operator(o, where="space.operators") for o in self.operators)
        not_mixers = [o for o in ops if not operators.is_mixer(o)]
        if not_mixers:
            raise FlashsearchError(f"space.operators lists {', '.join(map(repr, not_mixers))}, which is not a token "
                                   "mixer; FFNs are set by space.ffn_choices, list mixers only")
        object.__setattr__(self, "operators", ops)
        for r in self.ratios:
            if r not in RATIOS:
                raise FlashsearchError(f"space.ratios has {r!r}; allowed ratios are {', '.join(RATIOS)}")
        _check_positive(n_stages=self.n_stages, max_blocks_per_stage=self.max_blocks_per_stage,
                        max_operators=self.max_operators)
        if not self.widths or any(w <= 0 for w in self.widths):
            raise FlashsearchError(f"space.widths must be a non-empty list of positive sizes, got {list(self.widths)}")
        if any(f < 0 for f in self.ffn_choices) or not self.ffn_choices:
            raise FlashsearchError(f"space.ffn_choices must be non-negative counts, got {list(self.ffn_choices)}")
        if self.n_stages > self.max_operators:
            raise FlashsearchError(f"space.max_operators={self.max_operators} cannot fit {self.n_stages} stages; "
                                   "raise max_operators or lower n_stages")

    def distributions(self) -> dict[str, BaseDistribution]:
        d: dict[str, BaseDistribution] = {}
        for s in range(self.n_stages):
            d[f"s{s}_a"] = CategoricalDistribution(self.operators)
            d[f"s{s}_b"] = CategoricalDistribution(self.operators)
            d[f"s{s}_ratio"] = CategoricalDistribution(self.ratios)
            d[f"s{s}_ffn"] = CategoricalDistribution(self.ffn_choices)
            d[f"s{s}_blocks"] = IntDistribution(1, self.max_blocks_per_stage)
        d["d_model"] = CategoricalDistribution(self.widths)
        return d

    @staticmethod
    def _block_mixers(a: str, b: str, ratio: str) -> list[str]:
        nb, na = (int(x) for x in ratio.split(":"))
        return [b] * nb + [a] * na

    def _stage_layers(self, params: Mapping[str, Any], s: int) -> list[str]:
        block: list[str] = []
        for mixer in self._block_mixers(params[f"s{s}_a"], params[f"s{s}_b"], params[f"s{s}_ratio"]):
            block += [mixer] + ["ffn"] * int(params[f"s{s}_ffn"])
        return block * int(params[f"s{s}_blocks"])

    def n_operators(self, params: Mapping[str, Any]) -> int:
        return sum(len(self._stage_layers(params, s)) for s in range(self.n_stages))

    def decode(self, params: Mapping[str, Any]) -> Genome:
        layers = [op for s in range(self.n_stages) for op in self._stage_layers(params, s)]
        return self.arch.genome(layers, int(params["d_model"]))

    def factors(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        out = []
        for s in range(self.n_stages):
            out.append(f"s{s}_a")
            if params[f"s{s}_ratio"] != "0:1":
                out.append(f"s{s}_b")        # b is dormant under 0:1; changing it would not change the genome
            out += [f"s{s}_ratio", f"s{s}_ffn", f"s{s}_blocks"]
        return tuple(out)

    def repair(self, params: Mapping[str, Any]) -> Params:
        """Shrink until <= max_operators: drop a block from the largest stage, then FFNs, then hybrid ratios."""
        p = dict(params)
        while self.n_operators(p) > self.max_operators:
            sizes = [len(self._stage_layers(p, s)) for s in range(self.n_stages)]
            order = sorted(range(self.n_stages), key=lambda s: (-sizes[s], -s))
            for s in order:
                if p[f"s{s}_blocks"] > 1:
                    p[f"s{s}_blocks"] -= 1
                    break
            else:
                for s in order:
                    smaller_ffn = [f for f in self.ffn_choices if f < p[f"s{s}_ffn"]]
                    if smaller_ffn:
                        p[f"s{s}_ffn"] = max(smaller_ffn)
                        break
                else:
                    for s in order:
                        shorter = [r for r in self.ratios if _ratio_len(r) < _ratio_len(p[f"s{s}_ratio"])]
                        if shorter:
                            p[f"s{s}_ratio"] = max(shorter, key=_ratio_len)
                            break
                    else:
                        raise FlashsearchError(
                            f"space.max_operators={self.max_operators} is too small for the smallest genome "
                            f"({self.n_operators(p)} operators); raise it")
        return p

    def encode(self, genome: Genome) -> Params | None:
        """Find stage params that decode exactly to genome (brute force over stage splits; spaces are small)."""
        if genome.d_model not in self.widths or self.arch.genome(genome.layer_types, genome.d_model) != genome:
            return None
        layers = list(genome.layer_types)
        candidates = self._stage_candidates()

        def split(start: int, s: int) -> list[dict] | None:
            if s == self.n_stages:
                return [] if start == len(layers) else None
            for stage_params, stage_layers in candidates:
                n = len(stage_layers)
                if layers[start:start + n] == stage_layers:
                    rest = split(start + n, s + 1)
                    if rest is not None:
                        return [stage_params] + rest
            return None

        stages = split(0, 0)
        if stages is None:
            return None
        params: Params = {}
        for s, sp in enumerate(stages):
            params.update({f"s{s}_{k}": v for k, v in sp.items()})
        params["d_model"] = genome.d_model
        return params

    def cheapest(self) -> list[Params]:
        out = []
        for op in self.operators:
            p: Params = {"d_model": min(self.widths)}
            for s in range(self.n_stages):
                p.update({f"s{s}_a": op, f"s{s}_b": op, f"s{s}_ratio": min(self.ratios, key=_ratio_len),
                          f"s{s}_ffn": min(self.ffn_choices), f"s{s}_blocks": 1})
            out.append(p)
        return out

    def _stage_candidates(self) -> list[tuple[dict, list[str]]]:
        out = []
        for a in self.operators:
            for b in self.operators:
                for ratio in self.ratios:
                    if ratio == "0:1" and b != a:
                        continue  # canonical: the dormant gene equals a when encoding
                    for ffn in self.ffn_choices:
                        for blocks in range(1, self.max_blocks_per_stage + 1):
                            sp = {"a": a, "b": b, "ratio": ratio, "ffn": ffn, "blocks": blocks}
                            p = {f"s0_{k}": v for k, v in sp.items()}
                            out.append((sp, self._stage_layers(p, 0)))
        return out


# --------------------------------------------------------------------------------------------------------
# layerwise
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerwiseSpace(SearchSpace):
    """A free list of operators, one per layer, with n_layers in [min_layers, max_layers] + d_model.

    Slots past n_layers are dormant genes (kept so a depth mutation can re-activate them).
    """

    operators: tuple[str, ...] = ("attention", "swa", "mamba2", "deltanet", "ffn")
    widths: tuple[int, ...] = (1024, 1536, 2048)
    min_layers: int = 4
    max_layers: int = 24
    arch: ArchDefaults = field(default_factory=ArchDefaults)
    name: str = "layerwise"

    def __post_init__(self) -> None:
        ops = tuple(canonical_operator(o, where="space.operators") for o in self.operators)
        object.__setattr__(self, "operators", ops)
        if not any(operators.is_mixer(o) for o in ops):
            raise FlashsearchError("space.operators has no token mixer; add one of " + ", ".join(operators.mixers()))
        _check_positive(min_layers=self.min_layers, max_layers=self.max_layers)
        if self.min_layers > self.max_layers:
            raise FlashsearchError(f"space.min_layers={self.min_layers} > space.max_layers={self.max_layers}")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise FlashsearchError(f"space.widths must be a non-empty list of positive sizes, got {list(self.widths)}")

    def distributions(self) -> dict[str, BaseDistribution]:
        d: dict[str, BaseDistribution] = {"n_layers": IntDistribution(self.min_layers, self.max_layers)}
        for i in range(self.max_layers):
            d[f"layer_{i}"] = CategoricalDistribution(self.operators)
        d["d_model"] = CategoricalDistribution(self.widths)
        return d

    def decode(self, params: Mapping[str, Any]) -> Genome:
        layers = [params[f"layer_{i}"] for i in range(int(params["n_layers"]))]
        return self.arch.genome(layers, int(params["d_model"]))

    def factors(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return ("n_layers",) + tuple(f"layer_{i}" for i in range(int(params["n_layers"])))

    def repair(self, params: Mapping[str, Any]) -> Params:
        """A genome needs a token mixer: if the active layers are all FFN, the first becomes the first mixer."""
        p = dict(params)
        active = [p[f"layer_{i}"] for i in range(int(p["n_layers"]))]
        if not any(operators.is_mixer(t) for t in active):
            p["layer_0"] = next(o for o in self.operators if operators.is_mixer(o))
        return p

    def cheapest(self) -> list[Params]:
        out = []
        for op in (o for o in self.operators if operators.is_mixer(o)):
            p: Params = {"n_layers": self.min_layers, "d_model": min(self.widths)}
            p.update({f"layer_{i}": op for i in range(self.max_layers)})
            out.append(p)
        return out

    def encode(self, genome: Genome) -> Params | None:
        n = genome.n_layers
        if (genome.d_model not in self.widths or not self.min_layers <= n <= self.max_layers
                or any(t not in self.operators for t in genome.layer_types)
                or self.arch.genome(genome.layer_types, genome.d_model) != genome):
            return None
        filler = self.operators[0]
        params: Params = {"n_layers": n}
        for i in range(self.max_layers):
            params[f"layer_{i}"] = genome.layer_types[i] if i < n else filler
        params["d_model"] = genome.d_model
        return params


def _ratio_len(ratio: str) -> int:
    return sum(int(x) for x in ratio.split(":"))


def _check_positive(**values: int) -> None:
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise FlashsearchError(f"space.{k} must be a positive integer, got {v!r}")


SPACE_KINDS: dict[str, type[SearchSpace]] = {"staged": StagedSpace, "layerwise": LayerwiseSpace}


def space_from_config(config: SpaceConfig) -> SearchSpace:
    """The space a `space:` section describes. Unset keys take the kind's defaults (the dataclasses above, their one
    home); a key of the other kind is refused rather than silently ignored."""
    cls = SPACE_KINDS.get(config.kind)
    if cls is None:
        raise FlashsearchError(f"space.kind={config.kind!r}; choose one of {', '.join(SPACE_KINDS)}")
    given = config.given()
    arch_keys = {f.name for f in fields(ArchDefaults)}
    own = {f.name for f in fields(cls)} - {"arch", "name"}
    foreign = sorted(set(given) - own - arch_keys)
    if foreign:
        raise FlashsearchError(f"space.{foreign[0]} does not apply to space.kind={config.kind}; remove it, or "
                               f"set the kind it belongs to")
    arch = ArchDefaults(**{k: (dict(v) if k == "op_options" else v) for k, v in given.items() if k in arch_keys})
    space = cls(arch=arch, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if k in own})
    small = [w for w in space.widths if w < arch.head_dim]
    if small:
        raise FlashsearchError(f"space.widths {small} are smaller than space.head_dim={arch.head_dim}; "
                               "raise the widths or lower head_dim")
    # Validate op_options against each operator's typed Options once, up front: a Genome checks them when built.
    arch.genome(["ffn"] + [o for o in space.operators if o != "ffn"], space.widths[0])
    return space
