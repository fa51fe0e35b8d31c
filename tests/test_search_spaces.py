"""Every YAML that ships is built by a test: search configs build their space, objectives and seeds;
reference genomes build a model (on the meta device, so 1B-scale costs nothing)."""

import random
from pathlib import Path

import pytest

from flashsearch.builders import build_latency, build_quality, build_seeds, build_space, load_genome
from flashsearch.config import load_config
from flashsearch.model import HybridLM, count_parameters

ROOT = Path(__file__).resolve().parents[1]
SEARCH_YAMLS = sorted((ROOT / "search_spaces").glob("*.yaml"))
REFERENCE_YAMLS = sorted((ROOT / "search_spaces" / "reference").glob("*.yaml"))


def test_there_is_something_to_test():
    assert any(p.name == "hybrid_1b.yaml" for p in SEARCH_YAMLS)
    assert any(p.name == "nemotron_flash_1b.yaml" for p in REFERENCE_YAMLS)


@pytest.mark.parametrize("path", SEARCH_YAMLS, ids=lambda p: p.name)
def test_search_yaml_builds(path):
    cfg = load_config(path)
    space = build_space(cfg)
    assert callable(build_latency(cfg).predict)
    assert callable(build_quality(cfg).evaluate)
    seeds, notes = build_seeds(cfg, space)
    assert not notes, notes                       # every shipped seed is expressible in its space
    assert len(seeds) == len(cfg.search.seeds)
    g = space.decode(space.sample(random.Random(0)))
    assert count_parameters(g) > 0


@pytest.mark.parametrize("path", REFERENCE_YAMLS, ids=lambda p: p.name)
def test_reference_genome_builds(path):
    import torch

    genome = load_genome(path)
    with torch.device("meta"):
        model = HybridLM(genome)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(genome)


def test_flash_1b_parameter_count_matches_paper():
    n = count_parameters(load_genome(ROOT / "search_spaces" / "reference" / "nemotron_flash_1b.yaml"))
    assert abs(n - 0.96e9) / 0.96e9 < 0.02, n
