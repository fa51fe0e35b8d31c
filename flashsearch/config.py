"""Run configuration: a user YAML composed with Hydra, command-line overrides, typed frozen dataclasses out.

`load_config("search_spaces/hybrid_1b.yaml", ["search.trials=40", "workload.device=a100"])` composes
schema defaults <- the user's file <- overrides (Hydra override syntax), validates every key and type against
the schema below, and returns a frozen `RunConfig`. Anything wrong becomes one FlashsearchError line.

One home for each default and each check: every section is a frozen dataclass that checks its own values when
built (so a config built in Python is as valid as one loaded from YAML), and doubles as the Hydra schema.
Sections owned by a component live with it: `workload` is `flashsearch.proxies.base.Workload` itself; the
`space` section leaves unset keys to the space kind's own defaults (flashsearch/space.py); plug-ins (`latency`,
`quality`, `search.sampler`) are a short name or a mapping with `_target_`, whose options their class checks.
Nothing here imports the search engine: search/ depends on config, never the other way round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flashsearch.errors import FlashsearchError
from flashsearch.proxies.base import Workload

FIDELITIES = ("single", "multi")
LOGGERS = ("none", "wandb")


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise FlashsearchError(msg)


def _positive(section: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _need(value is None or value > 0, f"{section}.{name} must be positive, got {value}")


def _plugin(key: str, spec: Any) -> None:
    _need(isinstance(spec, str) or (isinstance(spec, dict) and "_target_" in spec),
          f"{key} must be a short name (e.g. {key}=NAME) or a mapping with _target_, got {spec!r}")


@dataclass(frozen=True)
class SpaceConfig:
    """The `space:` section. A key left unset (None) takes the default of its space kind, kept in
    flashsearch/space.py next to the code it configures; keys of the other kind are refused there."""

    kind: str = "staged"                           # staged | layerwise
    operators: Optional[List[str]] = None
    widths: Optional[List[int]] = None
    # staged
    n_stages: Optional[int] = None
    ratios: Optional[List[str]] = None
    ffn_choices: Optional[List[int]] = None
    max_blocks_per_stage: Optional[int] = None
    max_operators: Optional[int] = None
    # layerwise
    min_layers: Optional[int] = None
    max_layers: Optional[int] = None
    # shared by every genome of the space (flashsearch.space.ArchDefaults)
    head_dim: Optional[int] = None
    kv_group: Optional[int] = None
    ffn_ratio: Optional[float] = None
    vocab_size: Optional[int] = None
    op_options: Any = field(default_factory=dict)

    def given(self) -> dict[str, Any]:
        """The keys the user set, for the space's builder."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "kind" and getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Ladder:
    """Multi-fidelity rungs: training budgets in tokens, strictly increasing; the last is the fidelity the front is
    published at. eta: each rung promotes the best 1/eta of the candidates that reached it (search/rungs.py)."""

    tokens: tuple[int, ...]
    eta: int = 3

    @classmethod
    def of(cls, rungs: Iterable[Any] | None, eta: Any, top: int | None = None, n_rungs: Any = 3) -> "Ladder":
        """Validated ladder; every problem is one line naming the key and the fix. With `rungs` empty the ladder
        is derived: `n_rungs` budgets spaced by eta, ending at `top` (top / eta^k, k = n_rungs-1 .. 0)."""
        if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
            raise FlashsearchError(f"budget.eta must be an integer >= 2 (promote the best 1/eta of a rung), "
                                   f"got {eta!r}")
        rungs = list(rungs or [])
        if not rungs:
            if isinstance(n_rungs, bool) or not isinstance(n_rungs, int) or n_rungs < 1:
                raise FlashsearchError(f"budget.n_rungs must be an integer >= 1, got {n_rungs!r}: an empty ladder "
                                       "has no rung to train at (or list them: budget.rungs=[32768,98304,294912])")
            if top is None:
                raise FlashsearchError("budget.rungs is empty and there is no budget.tokens to derive it from")
            rungs = [int(top) // eta ** k for k in range(n_rungs - 1, -1, -1)]
            if rungs[0] < 1 or len(set(rungs)) < len(rungs):
                raise FlashsearchError(f"budget.tokens={top} is too small for {n_rungs} rungs spaced by eta={eta}; "
                                       "lower budget.n_rungs or raise budget.tokens")
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rungs):
            raise FlashsearchError(f"budget.rungs must be positive integers (tokens), got {rungs}")
        if any(b <= a for a, b in zip(rungs, rungs[1:])):
            raise FlashsearchError(f"budget.rungs must be strictly increasing, got {rungs}")
        if top is not None and rungs[-1] != top:
            raise FlashsearchError(
                f"budget.rungs must end at budget.tokens={top} (the top rung is the training budget the front is "
                f"published at), got {rungs}; fix one of them, or drop budget.rungs to derive the ladder from "
                "budget.tokens, budget.n_rungs and budget.eta")
        return cls(tuple(int(r) for r in rungs), int(eta))

    @property
    def top(self) -> int:
        return len(self.tokens) - 1


@dataclass(frozen=True)
class BudgetConfig:
    tokens: int = 200_000                          # training tokens per candidate (multi-fidelity: the top rung)
    time_limit_s: Optional[float] = None           # per candidate: training stops (and fails "time_limit") past it
    # Multi-fidelity (search.fidelity=multi): the ladder of training budgets ending at `tokens`; every candidate
    # trains at the first rung, the best 1/eta of a rung are promoted to the next. Default: n_rungs rungs spaced
    # by eta (tokens / eta^k, so it follows a budget.tokens override); or list them in `rungs`.
    rungs: List[int] = field(default_factory=list)
    n_rungs: int = 3
    eta: int = 3

    def __post_init__(self) -> None:
        _positive("budget", self, "tokens", "time_limit_s")

    def ladder(self) -> Ladder:
        return Ladder.of(self.rungs, self.eta, top=self.tokens, n_rungs=self.n_rungs)


@dataclass(frozen=True)
class SearchConfig:
    # A short name (aging | random | nsga2 | tpe) or {_target_: my_module.MySampler, ...options}: any Optuna
    # sampler class (flashsearch/search/samplers.py).
    sampler: Any = "aging"
    trials: int = 24                               # completed trials to reach (resume counts earlier ones)
    population: int = 12                           # P: newest completed trials that form the population
    sample_size: int = 4                           # S: tournament size (aging)
    target_latency: Optional[float] = None         # seconds; None = Pareto mode
    workers: int = 2                               # trials in flight
    seeds: List[str] = field(default_factory=list)  # genome YAMLs (relative to the config file) seeded first
    max_failures: Optional[int] = None             # failures in one run before it stops (None: max(10, trials))
    timeout_s: Optional[float] = None              # no new trials after this many seconds; those in flight finish
    trial_timeout_s: Optional[float] = None        # a trial running longer is cancelled and FAILED "timeout after N s"
    retries: int = 1                               # re-runs of a trial failed by a transient fault (time limit, OOM, lost worker, ...)
    children_per_ask: int = 1                      # aging: mutate K children, train the one a ridge on the trials predicts best
    fidelity: str = "single"                       # single: every candidate at budget.tokens; multi: budget.rungs (ASHA)

    def __post_init__(self) -> None:
        _plugin("search.sampler", self.sampler)
        _positive("search", self, "trials", "population", "sample_size", "workers", "children_per_ask")
        _need(self.target_latency is None or self.target_latency > 0,
              f"search.target_latency must be a positive number of seconds, got {self.target_latency}")
        for key in ("timeout_s", "trial_timeout_s"):
            value = getattr(self, key)
            _need(value is None or value > 0, f"search.{key} must be a positive number of seconds, got {value}")
        _need(self.retries >= 0, f"search.retries must be >= 0, got {self.retries}")
        _need(self.max_failures is None or self.max_failures >= 0,
              f"search.max_failures must be >= 0, got {self.max_failures}")
        _need(self.fidelity in FIDELITIES, f"search.fidelity={self.fidelity!r}; choose single or multi")


@dataclass(frozen=True)
class RayConfig:
    address: Optional[str] = None                  # None: local ray.init(); "auto" or host:port joins a cluster;
                                                   # "local": no Ray, workers are threads in this process
    num_cpus_per_trial: float = 1.0                # a trial's CPUs (split evenly over its workers)
    num_gpus_per_trial: float = 0.0                # one-worker trials only; DDP trials use gpus_per_worker
    # Data parallel (docs/cluster.md): > 1 trains each candidate with torch DDP across that many Ray Train workers,
    # the global batch unchanged (short_train.batch_size must split evenly over them).
    workers_per_trial: int = 1
    gpus_per_worker: int = 0                       # 0: CPU workers (gloo); 1: one GPU per worker (NCCL)

    def __post_init__(self) -> None:
        _need(self.num_cpus_per_trial >= 0 and self.num_gpus_per_trial >= 0,
              "ray.num_cpus_per_trial and ray.num_gpus_per_trial must be >= 0")
        _need(isinstance(self.workers_per_trial, int) and not isinstance(self.workers_per_trial, bool)
              and self.workers_per_trial >= 1, f"ray.workers_per_trial must be an integer >= 1, got "
              f"{self.workers_per_trial!r}")
        _need(self.gpus_per_worker in (0, 1) and not isinstance(self.gpus_per_worker, bool),
              f"ray.gpus_per_worker must be 0 (CPU workers) or 1 (torch DDP runs one process per GPU), got "
              f"{self.gpus_per_worker!r}")
        if self.workers_per_trial > 1:
            _need(self.address != "local", "ray.workers_per_trial > 1 needs Ray (Ray Train workers); drop "
                  "ray.address=local or set ray.workers_per_trial=1")
            _need(self.num_gpus_per_trial == 0, "with ray.workers_per_trial > 1 set ray.gpus_per_worker, not "
                  "ray.num_gpus_per_trial")
        else:
            _need(self.gpus_per_worker == 0, "ray.gpus_per_worker is for ray.workers_per_trial > 1; a one-worker "
                  "trial asks for GPUs with ray.num_gpus_per_trial")


@dataclass(frozen=True)
class DataConfig:
    path: Optional[str] = None                     # your own text: a .txt/.jsonl file or a directory of them
    text_field: str = "text"                       # the JSONL field holding the text
    corpus: Optional[str] = None                   # a named corpus when path is unset: wikipedia (the default),
                                                   # wikipedia_en or pydoc (proxies/quality/corpus.py)
    # Tokens instead of bytes (docs/data.md); the proxy's score stays bits per byte of validation text.
    shards: Optional[str] = None                   # a folder made by `flashsearch data prepare`: its text, split
                                                   # and tokenizer replace path/corpus/tokenizer
    tokenizer: Optional[str] = None                # bytes (None, the default) | bpe (ours, trained once on the
                                                   # default corpus) | a tokenizer.json or a folder holding one:
                                                   # the text above is tokenized once into cached shards

    def __post_init__(self) -> None:
        _need(self.path is None or self.corpus is None,
              "data.path and data.corpus are both set; keep data.path for your own text or data.corpus for a named "
              "corpus, not both")
        for key in ("shards", "tokenizer"):
            value = getattr(self, key)
            _need(value is None or (isinstance(value, str) and bool(value.strip())),
                  f"data.{key} must be a non-empty string, got {value!r}")
        given = [k for k in ("path", "corpus", "tokenizer") if getattr(self, k) is not None]
        _need(self.shards is None or not given,
              f"data.shards and data.{given[0] if given else ''} are both set; the shards already fix the text and "
              f"its tokenizer: keep data.shards alone (add data.{given[0] if given else ''}=null to a command line "
              "that sets data.shards), or drop it to tokenize data.path / data.corpus")


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
    workload: Workload = field(default_factory=Workload)
    search: SearchConfig = field(default_factory=SearchConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    export_top: int = 3
    logger: str = "none"
    config_path: str = ""                          # set by load_config: the YAML this run came from

    def __post_init__(self) -> None:
        """Checks across sections (each section checked its own values when it was built)."""
        _positive("", self, "export_top")
        _need(self.logger in LOGGERS, f"logger={self.logger!r}; choose one of {', '.join(LOGGERS)}")
        for name in self.imports:
            _need(bool(re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", name)),
                  f"imports: {name!r} is not a module name; give dotted names like my_pkg.my_ops")
        _need(bool(str(self.out_dir).strip()), "out_dir is empty; give a directory, e.g. out_dir=runs/my_search")
        _plugin("latency", self.latency)
        _plugin("quality", self.quality)
        ladder = self.ladder()
        if ladder is not None:
            least = ladder.eta ** ladder.top  # each rung keeps 1/eta: fewer candidates never reach the top
            _need(self.search.trials >= least,
                  f"search.fidelity=multi with {ladder.top + 1} rungs and eta={ladder.eta} needs search.trials >= "
                  f"{least} for any candidate to reach the top rung (got {self.search.trials}); raise "
                  "search.trials, lower budget.n_rungs, or set search.fidelity=single")

    def ladder(self) -> Ladder | None:
        """The rungs candidates train at under search.fidelity=multi; None under single fidelity."""
        return self.budget.ladder() if self.search.fidelity == "multi" else None


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
        checked = e if isinstance(e, FlashsearchError) else e.__cause__
        if isinstance(checked, FlashsearchError):  # a section's own check (its __post_init__)
            raise FlashsearchError(f"invalid config {path}: {checked}") from None
        msg = _one_line(e)
        unknown = re.search(r"Could not override '([^']+)'|ConfigKeyError.*\(key ([^)]+)\)", msg)
        if unknown:
            name = unknown.group(1) or unknown.group(2)
            section = name.rpartition(".")[0]
            msg = (f"unknown key {name!r}" + (f" in {section}" if section else "") +
                   "; check its spelling against docs/configuration.md")
        raise FlashsearchError(f"invalid config {path}: {msg}") from None
    assert isinstance(run, RunConfig)
    return run


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
