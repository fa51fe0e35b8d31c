"""One obvious builder for each object a RunConfig describes: space, latency predictor, quality proxy, seeds."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Mapping

import yaml

from flashsearch.config import RunConfig, resolve_relative
from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch.proxies.registry import LATENCY_PREDICTORS, QUALITY_PROXIES  # short name -> dotted path
from flashsearch.space import SearchSpace, space_from_config


def build_space(cfg: RunConfig) -> SearchSpace:
    """The space of `space:`; its kinds and their defaults live in flashsearch/space.py."""
    return space_from_config(cfg.space)


def resolve_target(target: str, short_names: Mapping[str, str], what: str) -> type:
    """The class a `_target_` names: a short name from `short_names`, else a dotted import path."""
    path = short_names.get(target, target)
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise FlashsearchError(f"{what}._target_={target!r} is neither a short name ({', '.join(short_names)}) "
                               "nor a dotted path like mypkg.module.MyClass")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise FlashsearchError(f"{what}._target_={target!r}: cannot import module {module_name!r} ({e}); "
                               "check the path and that the module is on PYTHONPATH") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise FlashsearchError(f"{what}._target_={target!r}: module {module_name!r} has no {attr!r}") from None


def spec_of(spec: Any) -> tuple[str, dict[str, Any]]:
    """`roofline` or {_target_: roofline, device: a100} -> ("roofline", {"device": "a100"})."""
    if isinstance(spec, str):
        return spec, {}
    spec = dict(spec)
    return str(spec.pop("_target_")), spec


def instantiate(spec: Any, short_names: Mapping[str, str], what: str, **extra: Any) -> Any:
    """Build a plug-in from its spec; unknown constructor arguments are one clear error, not a TypeError."""
    target, kwargs = spec_of(spec)
    cls = resolve_target(target, short_names, what)
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params and not takes_any]
    if unknown:
        allowed = ", ".join(k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
        raise FlashsearchError(f"{what}: {target} does not take option(s) {', '.join(unknown)}; it takes: {allowed}")
    for k, v in extra.items():  # context the config supplies (e.g. data path), only if the class wants it
        if (k in params or takes_any) and k not in kwargs:
            kwargs[k] = v
    try:
        return cls(**kwargs)
    except FlashsearchError:
        raise
    except (TypeError, ValueError) as e:
        raise FlashsearchError(f"{what}: cannot build {target} with {kwargs}: {e}") from None


def build_latency(cfg: RunConfig) -> Any:
    predictor = instantiate(cfg.latency, LATENCY_PREDICTORS, "latency", device=cfg.workload.device)
    if not callable(getattr(predictor, "predict", None)):
        raise FlashsearchError(f"latency: {type(predictor).__name__} has no predict(genome, workload) method; "
                               "see the LatencyPredictor protocol in flashsearch.proxies.base")
    return predictor


def quality_context(cfg: RunConfig) -> dict[str, Any]:
    """What the run's config hands a quality proxy beyond its own `quality:` options (taken where its constructor
    accepts them): the seed and the `data:` section, with paths resolved."""
    data_path = data_path_of(cfg)
    extra: dict[str, Any] = {"seed": cfg.seed}
    if data_path is not None:
        extra["data_path"] = str(data_path)
        extra["text_field"] = cfg.data.text_field
    if cfg.data.corpus is not None:
        extra["corpus"] = cfg.data.corpus
    if cfg.data.shards is not None:  # a folder: as given if it exists, else relative to the config file
        shards = Path(cfg.data.shards).expanduser()
        extra["shards"] = str(shards if shards.is_absolute() or shards.exists()
                              else resolve_relative(cfg, cfg.data.shards))
    if cfg.data.tokenizer is not None:  # bytes / bpe / bpe:N, or a tokenizer file found like the shards
        tok = Path(cfg.data.tokenizer).expanduser()
        relative = resolve_relative(cfg, cfg.data.tokenizer)
        extra["tokenizer"] = str(relative) if not tok.exists() and relative.exists() else cfg.data.tokenizer
    return extra


def build_quality(cfg: RunConfig) -> Any:
    extra = quality_context(cfg)
    proxy = instantiate(cfg.quality, QUALITY_PROXIES, "quality", **extra)
    if not callable(getattr(proxy, "evaluate", None)):
        raise FlashsearchError(f"quality: {type(proxy).__name__} has no evaluate(genome, budget) method; "
                               "see the QualityProxy protocol in flashsearch.proxies.base")
    return proxy


def data_path_of(cfg: RunConfig) -> Path | None:
    """data.path as given (relative to the working directory), else relative to the config file."""
    if cfg.data.path is None:
        return None
    p = Path(cfg.data.path)
    if not p.is_absolute() and not p.exists():
        p = resolve_relative(cfg, cfg.data.path)
    if not p.exists():
        raise FlashsearchError(f"data.path {cfg.data.path!r} does not exist; point it at a .txt/.jsonl file or a "
                               "directory of them, or remove it to use a named corpus (data.corpus)")
    return p


def load_genome(path: str | Path) -> Genome:
    """Read a genome YAML (search_spaces/reference/*.yaml); extra documentation keys live under `meta`."""
    path = Path(path)
    if not path.is_file():
        raise FlashsearchError(f"genome file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise FlashsearchError(f"YAML syntax error at {where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise FlashsearchError(f"genome file {path} must be a mapping with layer_types, d_model, ...")
    data.pop("meta", None)
    data.pop("name", None)
    return Genome.from_dict(data, where=str(path))


def build_seeds(cfg: RunConfig, space: SearchSpace) -> tuple[list[dict[str, Any]], list[str]]:
    """Params of the configured seed genomes that the space can express, and a note for each one it cannot."""
    seeds, notes = [], []
    for rel in cfg.search.seeds:
        path = resolve_relative(cfg, rel)
        genome = load_genome(path)
        params = space.encode(genome)
        if params is None:
            notes.append(f"seed {rel} is not expressible in the {space.name} space; skipped")
        else:
            seeds.append(params)
    return seeds, notes


__all__ = ["build_space", "quality_context", "build_latency", "build_quality", "build_seeds", "load_genome", "instantiate",
           "resolve_target", "spec_of", "LATENCY_PREDICTORS", "QUALITY_PROXIES"]
