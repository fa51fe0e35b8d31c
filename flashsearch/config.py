"""Run configuration: a user YAML composed with Hydra, command-line overrides, typed frozen dataclasses out.

`load_config("search_spaces/hybrid_1b.yaml", ["search.trials=40", "latency.device=a100"])` composes
schema defaults <- the user's file <- overrides (Hydra override syntax), validates every key and type against
the schema below, and returns a frozen `RunConfig`. Anything wrong becomes one FlashsearchError line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, List, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flashsearch.errors import FlashsearchError

SAMPLERS = ("aging", "random", "nsga2", "tpe")
FIDELITIES = ("single", "multi")
LOGGERS = ("none", "wandb")


@dataclass(frozen=True)
class SpaceConfig:
    kind: str = "staged"                           # staged | layerwise
    operators: List[str] = field(default_factory=lambda: ["attention", "mamba2", "deltanet"])
    widths: List[int] = field(default_factory=lambda: [1024, 1280, 1536, 1792, 2048, 2304, 2560])
    # staged
    n_stages: int = 3
    ratios: List[str] = field(default_factory=lambda: ["0:1", "1:1", "1:2", "1:3"])
    ffn_choices: List[int] = field(default_factory=lambda: [0, 1, 2])
    max_blocks_per_stage: int = 4
    max_operators: int = 30
    # layerwise
    min_layers: int = 4
    max_layers: int = 24
    # shared by every genome of the space
    head_dim: int = 128
    kv_group: int = 4
    ffn_ratio: float = 3.0
    vocab_size: int = 131072
    op_options: Any = field(default_factory=dict)


@dataclass(frozen=True)
class WorkloadConfig:
    device: str = "h100"
    batch: int = 1
    prompt_len: int = 128
    decode_tokens: int = 8192


@dataclass(frozen=True)
class BudgetConfig:
    tokens: int = 200_000                          # training tokens per candidate (multi-fidelity: the top rung)
    time_limit_s: Optional[float] = None
    # Multi-fidelity (search.fidelity=multi): the ladder of training budgets ending at `tokens`; every candidate
    # trains at the first rung, the best 1/eta of a rung are promoted to the next. Default: n_rungs rungs spaced
    # by eta (tokens / eta^k, so it follows a budget.tokens override); or list them in `rungs`.
    rungs: List[int] = field(default_factory=list)
    n_rungs: int = 3
    eta: int = 3


@dataclass(frozen=True)
class SearchConfig:
    sampler: str = "aging"                         # aging | random | nsga2 | tpe
    trials: int = 24                               # completed trials to reach (resume counts earlier ones)
    population: int = 12                           # P: newest completed trials that form the population
    sample_size: int = 4                           # S: tournament size
    target_latency: Optional[float] = None         # seconds; None = Pareto mode
    workers: int = 2                               # trials in flight
    seeds: List[str] = field(default_factory=list)  # genome YAMLs (relative to the config file) seeded first
    max_failures: Optional[int] = None
    trial_timeout_s: Optional[float] = None        # a trial running longer is cancelled and FAILED "timeout after N s"
    retries: int = 1                               # re-runs of a trial failed by a transient fault (time limit, OOM, lost worker, ...)
    children_per_ask: int = 1                      # aging: mutate K children, train the one a ridge on the trials predicts best
    fidelity: str = "single"                       # single: every candidate at budget.tokens; multi: budget.rungs (ASHA)


@dataclass(frozen=True)
class RayConfig:
    address: Optional[str] = None                  # None: local ray.init(); "auto" or host:port joins a cluster
    num_cpus_per_trial: float = 1.0
    num_gpus_per_trial: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    path: Optional[str] = None                     # your own text: a .txt/.jsonl file or a directory of them
    text_field: str = "text"                       # the JSONL field holding the text
    corpus: Optional[str] = None                   # a named corpus when path is unset: wikipedia (the default,
                                                   # 11 MB), wikipedia_en or pydoc (proxies/quality/corpus.py)


@dataclass(frozen=True)
class RunConfig:
    name: str = "search"
    seed: int = 0
    # Python modules imported before the space is built and in every worker (e.g. a module defining your own
    # operator classes: they register themselves when imported).
    imports: List[str] = field(default_factory=list)
    out_dir: str = "runs/${name}"
    space: SpaceConfig = field(default_factory=SpaceConfig)
    latency: Any = field(default_factory=lambda: {"_target_": "roofline"})
    quality: Any = field(default_factory=lambda: {"_target_": "short_train"})
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    export_top: int = 3
    logger: str = "none"
    config_path: str = ""                          # set by load_config: the YAML this run came from


_SCHEMA = "_flashsearch_schema"
_MAIN = "_flashsearch_main"


def _unfreeze(node: Any) -> None:
    """Frozen dataclasses make read-only OmegaConf nodes; composition must write into them before freezing again."""
    node._set_flag("readonly", None)
    if isinstance(node, DictConfig):
        for key in node.keys():
            _unfreeze(node._get_node(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            _unfreeze(node._get_node(i))


def _one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors are multi-line with internals; keep the message and the key they name."""
    text = str(exc).strip()
    key = re.search(r"full_key:\s*(\S+)", text)
    first = text.splitlines()[0] if text else type(exc).__name__
    first = re.sub(r"^In '[^']+':\s*", "", first)
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        detail = str(cause).strip().splitlines()[0]
        if detail not in first:
            first = f"{first.rstrip('.')}: {detail}"
    if key and key.group(1) not in first:
        first = f"{first} (key {key.group(1)})"
    return first.replace("\n", " ")


def _check_yaml(path: Path) -> None:
    """Fail early, with the line, on YAML syntax errors and on a top level that is not a mapping."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise FlashsearchError(f"YAML syntax error at {where}: {problem}; fix the file and run again") from None
    except OSError as e:
        raise FlashsearchError(f"cannot read config {path}: {e.strerror}") from None
    if data is None:
        raise FlashsearchError(f"config {path} is empty; give it at least a space: and a search: section, or start "
                               "from search_spaces/hybrid_1b.yaml")
    if not isinstance(data, dict):
        raise FlashsearchError(f"config {path} must be a mapping of keys (name:, space:, search:, ...), "
                               f"got a {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(RunConfig)} - {"defaults"})
    if unknown:
        allowed = ", ".join(f.name for f in fields(RunConfig) if f.name != "config_path")
        raise FlashsearchError(f"unknown key(s) {', '.join(unknown)} in {path}; top-level keys are: {allowed}")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose schema <- user YAML <- overrides with Hydra and return a validated, frozen RunConfig."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    path = Path(path)
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise FlashsearchError(f"config file not found: {path}{hint}; pass a YAML such as "
                               "search_spaces/hybrid_1b.yaml")
    if path.suffix not in (".yaml", ".yml"):
        raise FlashsearchError(f"config {path} must be a .yaml file")
    _check_yaml(path)
    for o in overrides:
        if "=" not in o:
            raise FlashsearchError(f"bad override {o!r}: use key=value, e.g. search.trials=40")

    schema = OmegaConf.structured(RunConfig)
    _unfreeze(schema)
    for plugin in ("latency", "quality", "space.op_options"):  # plug-in options are open-ended: allow new keys
        node = OmegaConf.select(schema, plugin)
        if isinstance(node, DictConfig):
            OmegaConf.set_struct(node, False)
    store = ConfigStore.instance()
    store.store(name=_SCHEMA, node=schema)
    store.store(name=_MAIN, node={"defaults": [_SCHEMA, path.stem, "_self_"]})
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.resolve().parent), version_base=None):
            cfg = compose(_MAIN, overrides=list(overrides))
        cfg.config_path = str(path)
        run = OmegaConf.to_object(cfg)
    except (OmegaConfBaseException, Exception) as e:  # hydra wraps everything in its own exception types
        if isinstance(e, FlashsearchError):
            raise
        msg = _one_line(e)
        unknown = re.search(r"Could not override '([^']+)'|ConfigKeyError.*\(key ([^)]+)\)", msg)
        if unknown:
            name = unknown.group(1) or unknown.group(2)
            section = name.rpartition(".")[0]
            msg = (f"unknown key {name!r}" + (f" in {section}" if section else "") +
                   "; check its spelling against the Configuration table in README.md")
        raise FlashsearchError(f"invalid config {path}: {msg}") from None
    assert isinstance(run, RunConfig)
    validate(run)
    return run


def validate(cfg: RunConfig) -> None:
    """Checks a schema cannot express; each names the key and the fix."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise FlashsearchError(f"invalid config {cfg.config_path or ''}: {msg}".replace(" : ", ": "))

    s = cfg.search
    need(s.sampler in SAMPLERS, f"search.sampler={s.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    for key, value in (("search.trials", s.trials), ("search.population", s.population),
                       ("search.sample_size", s.sample_size), ("search.workers", s.workers),
                       ("search.children_per_ask", s.children_per_ask),
                       ("budget.tokens", cfg.budget.tokens), ("workload.batch", cfg.workload.batch),
                       ("workload.decode_tokens", cfg.workload.decode_tokens), ("export_top", cfg.export_top)):
        need(value > 0, f"{key} must be positive, got {value}")
    need(cfg.workload.prompt_len >= 0, f"workload.prompt_len must be >= 0, got {cfg.workload.prompt_len}")
    need(s.sample_size <= s.population,
         f"search.sample_size={s.sample_size} exceeds search.population={s.population}; lower it")
    need(s.target_latency is None or s.target_latency > 0,
         f"search.target_latency must be a positive number of seconds, got {s.target_latency}")
    need(cfg.budget.time_limit_s is None or cfg.budget.time_limit_s > 0,
         f"budget.time_limit_s must be positive, got {cfg.budget.time_limit_s}")
    need(s.trial_timeout_s is None or s.trial_timeout_s > 0,
         f"search.trial_timeout_s must be a positive number of seconds, got {s.trial_timeout_s}")
    need(s.retries >= 0, f"search.retries must be >= 0, got {s.retries}")
    need(cfg.ray.num_cpus_per_trial >= 0 and cfg.ray.num_gpus_per_trial >= 0,
         "ray.num_cpus_per_trial and ray.num_gpus_per_trial must be >= 0")
    need(s.fidelity in FIDELITIES, f"search.fidelity={s.fidelity!r}; choose single or multi")
    if s.fidelity == "multi":
        from flashsearch.search.rungs import ladder_of

        try:
            ladder = ladder_of(cfg)
        except FlashsearchError as e:
            need(False, str(e))
        assert ladder is not None
        least = cfg.budget.eta ** ladder.top  # each rung keeps 1/eta: fewer candidates never reach the top
        need(s.trials >= least,
             f"search.fidelity=multi with {ladder.top + 1} rungs and eta={cfg.budget.eta} needs search.trials >= "
             f"{least} for any candidate to reach the top rung (got {s.trials}); raise search.trials, lower "
             "budget.n_rungs, or set search.fidelity=single")
    need(cfg.logger in LOGGERS, f"logger={cfg.logger!r}; choose one of {', '.join(LOGGERS)}")
    for name in cfg.imports:
        need(bool(re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", name)),
             f"imports: {name!r} is not a module name; give dotted names like my_pkg.my_ops")
    need(bool(str(cfg.out_dir).strip()), "out_dir is empty; give a directory, e.g. out_dir=runs/my_search")
    for key in ("latency", "quality"):
        spec = getattr(cfg, key)
        need(isinstance(spec, str) or (isinstance(spec, dict) and "_target_" in spec),
             f"{key} must be a short name (e.g. {key}=roofline) or a mapping with _target_, got {spec!r}")


def to_dict(obj: Any) -> Any:
    """A RunConfig (or part) as plain data, for saving next to the results."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def resolve_relative(cfg: RunConfig, relative: str) -> Path:
    """Paths inside a config (seeds, data) are relative to the config file, like includes in any YAML tool."""
    p = Path(relative)
    return p if p.is_absolute() else Path(cfg.config_path).resolve().parent / p
