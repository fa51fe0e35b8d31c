"""Study settings: settings.yaml is the one home of every default, typed by the study's frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from flashsearch.errors import FlashsearchError

from experiments.lib.settings import load_settings, parse_overrides
from experiments.lib.studies import settings_of, study_names


@dataclass(frozen=True)
class Demo:
    seeds: tuple[int, ...]
    tokens: int | None
    scale: float
    device: str
    train: bool
    out: str


YAML = """
seeds: [0, 1]
tokens: null
scale: 1
device: cpu
train: true
out: results
quick:
  seeds: [0]
  out: runs/quick
"""


@pytest.fixture
def settings_file(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(YAML)
    return path


def test_loads_typed_values(settings_file):
    s = load_settings(Demo, settings_file)
    assert s == Demo(seeds=(0, 1), tokens=None, scale=1.0, device="cpu", train=True, out="results")
    assert isinstance(s.scale, float)  # an int where a float is declared is widened, not rejected
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.scale = 2.0  # type: ignore[misc]


def test_quick_then_overrides_apply_in_order(settings_file):
    s = load_settings(Demo, settings_file, ["out=/tmp/x", "tokens=2048"], quick=True)
    assert (s.seeds, s.out, s.tokens) == ((0,), "/tmp/x", 2048)
    assert load_settings(Demo, settings_file, ["seeds=[3,4]"]).seeds == (3, 4)
    assert load_settings(Demo, settings_file, ["scale=1e-3"]).scale == 0.001  # YAML 1.1 reads this as a string


@pytest.mark.parametrize("override,message", [
    (["tokenz=5"], "unknown settings"),
    (["scale=fast"], "scale must be float"),
    (["train=1"], "train must be bool"),
    (["seeds=3"], "seeds must be a list"),
    (["tokens"], "not key=value"),
])
def test_bad_overrides_are_one_line_errors(settings_file, override, message):
    with pytest.raises(FlashsearchError, match=message):
        load_settings(Demo, settings_file, override)


def test_a_missing_setting_is_named(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("seeds: [0]\nscale: 1.0\ndevice: cpu\ntrain: true\nout: x\n")
    with pytest.raises(FlashsearchError, match=r"settings \['tokens'\] have no value"):
        load_settings(Demo, path)


def test_a_broken_quick_section_fails_the_normal_run_too(settings_file):
    settings_file.write_text(YAML + "  scale: fast\n")
    with pytest.raises(FlashsearchError, match="quick"):
        load_settings(Demo, settings_file)


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["a=1", "b=[1, 2]", "c=null", "d=cuda", "e=1e-3"]) == \
        {"a": 1, "b": [1, 2], "c": None, "d": "cuda", "e": "1e-3"}  # YAML 1.1: 1e-3 without a dot is a string


@pytest.mark.parametrize("name", study_names())
def test_every_study_settings_file_loads(name):
    normal, quick = settings_of(name), settings_of(name, quick=True)
    assert normal.out.startswith(f"experiments/{name}/results")  # results live in the study's folder
    assert not quick.out.startswith("experiments/")  # a smoke run never overwrites committed results
