"""Every YAML that ships is built by a test: search configs build their space, objectives and seeds; reference
genomes build a model (on the meta device, so 1B-scale costs nothing) whose size is checked against a closed-form
count of the published architectures."""

import random

import pytest

from factories import REFERENCE_DIR, ROOT
from flashsearch.builders import build_latency, build_quality, build_seeds, build_space, load_genome
from flashsearch.config import load_config
from flashsearch.genome import Genome
from flashsearch.model import count_parameters

SEARCH_YAMLS = sorted((ROOT / "search_spaces").glob("*.yaml"))
REFERENCE_YAMLS = sorted(REFERENCE_DIR.glob("*.yaml"))


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


# Parameters per layer from each operator's published definition (the reference implementation is named at each),
# written out here rather than counted from the modules, so a projection that changes shape, or a bias or a norm
# that appears or vanishes, fails the test. Every layer also has its pre-norm gain (d).
def attention_params(g: Genome) -> int:               # Llama / Qwen3 GQA, no biases: q, o (H*hd) and k, v (KV*hd)
    return 2 * g.d_model * g.n_heads * g.head_dim + 2 * g.d_model * g.n_kv_heads * g.head_dim


def ffn_params(g: Genome) -> int:                     # SwiGLU: gate, up, down
    return 3 * g.d_model * round(g.ffn_ratio * g.d_model)


def deltanet_params(g: Genome, conv: int = 4) -> int:  # fla DeltaNet: q, k, v, o; beta; q/k/v short convs; o-norm
    inner = g.n_heads * g.head_dim
    return 4 * g.d_model * inner + g.d_model * g.n_heads + 3 * inner * conv + g.head_dim


def mamba2_params(g: Genome, expand: float, head_dim: int, d_state: int, conv: int = 4) -> int:  # mamba_ssm Mamba2
    d_inner = int(expand * g.d_model)
    heads = d_inner // head_dim
    conv_dim = d_inner + 2 * d_state                  # x, B, C (one group)
    return (g.d_model * (d_inner + conv_dim + heads)  # in_proj -> z, xBC, dt
            + conv_dim * (conv + 1)                   # depthwise conv with bias
            + 3 * heads                               # dt_bias, A_log, D
            + d_inner                                 # gated output norm
            + d_inner * g.d_model)                    # out_proj


def gated_deltanet_params(g: Genome, conv: int = 4) -> int:  # fla Gated DeltaNet, defaults (expand_v 1, output gate)
    inner = g.n_heads * g.head_dim
    return (5 * g.d_model * inner                     # q, k, v, output gate, o
            + 2 * g.d_model * g.n_heads               # decay and beta per head
            + 3 * inner * conv + 2 * g.n_heads        # q/k/v short convs; A_log, dt_bias
            + g.head_dim)                             # o-norm


def gla_params(g: Genome, rank: int = 16) -> int:     # fla GLA, defaults (expand_k 0.5, expand_v 1, output gate)
    key_dim = g.d_model // 2
    return (2 * g.d_model * key_dim + 3 * g.d_model * g.d_model   # q, k; v, output gate, o
            + g.d_model * rank + rank * key_dim + key_dim         # low-rank decay projection with its bias
            + g.d_model // g.n_heads)                             # o-norm over a value head


def closed_form_params(g: Genome) -> int:
    """Tied embedding + final norm + every layer and its pre-norm gain."""
    mamba = {"expand": 2, "head_dim": 64, "d_state": 128, **g.options("mamba2")}
    assert not g.options("gated_deltanet") and not g.options("gla"), "closed forms here are for their defaults"
    per_layer = {"attention": attention_params(g), "swa": attention_params(g), "ffn": ffn_params(g),
                 "deltanet": deltanet_params(g), "mamba2": mamba2_params(g, **mamba),
                 "gated_deltanet": gated_deltanet_params(g), "gla": gla_params(g)}
    return g.vocab_size * g.d_model + g.d_model + sum(per_layer[t] + g.d_model for t in g.layer_types)


@pytest.mark.parametrize("path", REFERENCE_YAMLS, ids=lambda p: p.name)
def test_reference_genome_parameter_count_is_the_closed_form(path):
    genome = load_genome(path)
    assert count_parameters(genome) == closed_form_params(genome)


@pytest.mark.parametrize("name, total, non_embedding", [
    ("qwen3_0_6b.yaml", 0.596, 0.440),    # Qwen3 report, Table 1: 0.6 B, 0.44 B non-embedding (less 7k q/k-norm gains)
    ("llama3_2_1b.yaml", 1.236, 0.973),   # Llama 3.2 model card: 1.23 B (1,235,814,400), tied embedding
])
def test_closed_form_gives_the_published_sizes(name, total, non_embedding):
    """The closed form above is the architecture these models publish: it gives their published sizes."""
    g = load_genome(REFERENCE_DIR / name)
    n = closed_form_params(g)
    assert n / 1e9 == pytest.approx(total, abs=0.001)
    assert (n - g.vocab_size * g.d_model) / 1e9 == pytest.approx(non_embedding, abs=0.001)


def test_flash_1b_parameter_count_matches_paper():
    n = count_parameters(load_genome(REFERENCE_DIR / "nemotron_flash_1b.yaml"))
    assert abs(n - 0.96e9) / 0.96e9 < 0.02, n
