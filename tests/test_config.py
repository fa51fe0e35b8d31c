from pathlib import Path

import pytest

from flashsearch.config import RunConfig, load_config
from flashsearch.errors import FlashsearchError

ROOT = Path(__file__).resolve().parents[1]
HYBRID = ROOT / "search_spaces" / "hybrid_1b.yaml"


def test_overrides_compose_into_frozen_typed_config():
    cfg = load_config(HYBRID, ["search.trials=40", "out_dir=runs/x", "latency.device=a100", "quality.lr=0.01",
                               "search.target_latency=12.5"])
    assert isinstance(cfg, RunConfig)
    assert cfg.search.trials == 40 and isinstance(cfg.search.trials, int)
    assert cfg.search.target_latency == 12.5
    assert cfg.out_dir == "runs/x"
    assert cfg.latency == {"_target_": "roofline", "device": "a100"}
    assert cfg.quality["lr"] == 0.01
    with pytest.raises(Exception):
        cfg.search = None  # type: ignore[misc]


def test_interpolation_and_short_name_override():
    cfg = load_config(HYBRID, ["latency=measured", "name=abc", "out_dir=runs/${name}"])
    assert cfg.latency == "measured" and cfg.out_dir == "runs/abc"


@pytest.mark.parametrize("overrides,needle", [
    (["search.trialz=3"], "unknown key 'search.trialz'"),
    (["search.trials=abc"], "could not be converted to Integer"),
    (["search.trials=0"], "search.trials must be positive"),
    (["budget.tokens=-5"], "budget.tokens must be positive"),
    (["search.fidelity=multi", "search.trials=4"], "needs search.trials >= 9"),
    (["workload.batch=0"], "workload.batch must be an integer >= 1"),
    (["data.path=a.txt", "data.corpus=pydoc"], "data.path and data.corpus are both set"),
    (["search.target_latency=-1"], "target_latency must be a positive"),
    (["search.trials"], "use key=value"),
])
def test_bad_overrides(overrides, needle):
    with pytest.raises(FlashsearchError, match=needle):
        load_config(HYBRID, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(FlashsearchError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "syntax.yaml"
    bad.write_text("name: x\nsearch: [\n")
    with pytest.raises(FlashsearchError, match=r"YAML syntax error at .*syntax.yaml:3"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: x\nsearhc: {trials: 3}\n")
    with pytest.raises(FlashsearchError, match="unknown key.*searhc"):
        load_config(unknown)
    nested = tmp_path / "nested.yaml"
    nested.write_text("name: x\nspace: {kind: staged, widthz: [64]}\n")
    with pytest.raises(FlashsearchError, match="unknown key 'space.widthz'"):
        load_config(nested)
    typed = tmp_path / "typed.yaml"
    typed.write_text("search: {workers: many}\n")
    with pytest.raises(FlashsearchError, match="workers"):
        load_config(typed)


def test_sections_check_themselves_when_built_in_python():
    """A config built in code is as checked as one loaded from YAML: each section's own __post_init__."""
    from flashsearch.config import BudgetConfig, SearchConfig

    with pytest.raises(FlashsearchError, match="search.retries must be >= 0"):
        SearchConfig(retries=-1)
    with pytest.raises(FlashsearchError, match="budget.tokens must be positive"):
        BudgetConfig(tokens=0)
    with pytest.raises(FlashsearchError, match="search.sampler must be a short name"):
        SearchConfig(sampler={"population": 3})
    with pytest.raises(FlashsearchError, match="needs search.trials >= 9"):
        RunConfig(search=SearchConfig(fidelity="multi", trials=3))


def test_space_defaults_live_with_the_space_kind():
    """Unset space keys take the kind's own defaults; a key of the other kind is refused, not ignored."""
    from flashsearch.config import SpaceConfig
    from flashsearch.space import LayerwiseSpace, StagedSpace, space_from_config

    assert space_from_config(SpaceConfig(kind="staged")) == StagedSpace()
    assert space_from_config(SpaceConfig(kind="layerwise")) == LayerwiseSpace()
    assert space_from_config(SpaceConfig(kind="staged", widths=[256], head_dim=64)).widths == (256,)
    with pytest.raises(FlashsearchError, match="space.min_layers does not apply to space.kind=staged"):
        space_from_config(SpaceConfig(kind="staged", min_layers=3))
    with pytest.raises(FlashsearchError, match="space.head_dim must be positive"):
        space_from_config(SpaceConfig(head_dim=0))
