"""Pieces the study scripts share: sampling genomes from a shipped search space and the proxy it configures."""

from __future__ import annotations

import random
from typing import Any

from flashsearch.genome import Genome


def sample_genomes(config_path: str, n: int, seed: int = 0) -> list[Genome]:
    """n distinct genomes drawn uniformly from the search space of a flashsearch YAML."""
    from flashsearch.builders import build_space
    from flashsearch.config import load_config

    space = build_space(load_config(config_path))
    rng = random.Random(seed)
    out: dict[str, Genome] = {}
    for _ in range(100 * n):
        g = space.decode(space.sample(rng))
        out.setdefault(g.id, g)
        if len(out) == n:
            return list(out.values())
    raise ValueError(f"{config_path}: could only draw {len(out)} distinct genomes, asked for {n}")


def default_proxy(config_path: str) -> tuple[dict[str, Any], int]:
    """(ShortTrain keyword arguments, budget.tokens) that a search with this YAML uses per candidate: its
    quality: options plus what the run's config supplies (builders.quality_context: seed, data: section)."""
    from flashsearch.builders import quality_context
    from flashsearch.config import load_config
    from flashsearch.proxies.registry import QUALITY_PROXIES

    cfg = load_config(config_path)
    spec = cfg.quality if isinstance(cfg.quality, dict) else {"_target_": cfg.quality}
    if spec.get("_target_") not in ("short_train", QUALITY_PROXIES["short_train"]):
        raise ValueError(f"{config_path}: the studies need quality: short_train, got {spec.get('_target_')!r}")
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    for key, value in quality_context(cfg).items():
        kwargs.setdefault(key, value)
    return kwargs, int(cfg.budget.tokens)


def describe_proxy(kwargs: dict[str, Any]) -> str:
    """'ShortTrain defaults (seed 0)' or 'ShortTrain(width_divisor=8, seed=0)', for result tables."""
    extra = {k: v for k, v in kwargs.items() if k not in ("seed", "device")}
    if not extra:
        return f"ShortTrain defaults (seed {kwargs.get('seed', 0)})"
    return "ShortTrain(" + ", ".join(f"{k}={v!r}" for k, v in sorted(extra.items())) + ")"


def search_ladder(cfg):
    """The multi-fidelity Ladder a search with this config trains (None for single fidelity)."""
    return cfg.ladder()


def study_ladder(config_path: str, scale: float, study: str) -> tuple[Any, list[int], dict[str, Any], int]:
    """(the search's Ladder, its rungs x scale in whole proxy steps, the proxy's keyword arguments, tokens per
    step) for a study that trains the YAML's ladder; a single-fidelity YAML is a one-line error naming `study`."""
    from flashsearch.config import load_config
    from flashsearch.errors import FlashsearchError
    from flashsearch.proxies.quality.config import ShortTrainConfig

    ladder = search_ladder(load_config(config_path))
    if ladder is None:
        raise FlashsearchError(f"{study}: {config_path} is not a multi-fidelity search")
    kwargs, _ = default_proxy(config_path)
    proxy = ShortTrainConfig.from_options(**kwargs)
    per_step = proxy.batch_size * proxy.seq_len
    tokens = [max(2, round(t * scale) // per_step) * per_step for t in ladder.tokens]
    return ladder, tokens, kwargs, per_step
