"""Reference architectures count (as `flashsearch describe` reports it) within 2% of their published size."""

import json
from pathlib import Path

import pytest
import yaml

from factories import REFERENCE_DIR
from flashsearch import cli

PUBLISHED = {                                   # file -> parameters its source publishes
    "nemotron_flash_1b.yaml": 0.96e9,
    "qwen3_0_6b.yaml": 0.60e9,
    "llama3_2_1b.yaml": 1.24e9,
    "nemotron_flash_3b.yaml": 2.7e9,
}


def published_params(path: Path) -> float | None:
    value = (yaml.safe_load(path.read_text()).get("meta") or {}).get("published_params")
    return None if value is None else float(value)   # YAML reads 0.96e9 (no exponent sign) as a string


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_describe_params_match_published(name):
    path = REFERENCE_DIR / name
    assert published_params(path) == PUBLISHED[name]          # the file documents the number checked here
    params = cli.describe(str(path))["params"]
    assert abs(params - PUBLISHED[name]) / PUBLISHED[name] < 0.02, f"{name}: {params:,} vs {PUBLISHED[name]:,.0f}"


def test_every_published_count_is_checked():
    documented = {p.name for p in REFERENCE_DIR.glob("*.yaml") if published_params(p) is not None}
    assert documented == set(PUBLISHED)


def test_describe_cli_json(capsys):
    path = REFERENCE_DIR / "qwen3_0_6b.yaml"
    assert cli.main(["describe", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == cli.describe(str(path))["params"]
    assert info["operator_counts"] == {"attention": 28, "ffn": 28}
