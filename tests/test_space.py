import random

import pytest

from flashsearch.errors import FlashsearchError
from flashsearch import operators
from flashsearch.space import LayerwiseSpace, StagedSpace

SPACES = [StagedSpace(), StagedSpace(operators=("swa", "gla"), max_operators=12), LayerwiseSpace()]


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_samples_are_valid_and_decode(space):
    rng = random.Random(0)
    for _ in range(200):
        p = space.sample(rng)
        space.validate(p)
        g = space.decode(p)
        assert any(operators.is_mixer(t) for t in g.layer_types)
        if isinstance(space, StagedSpace):
            assert g.n_layers <= space.max_operators


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_mutation_changes_exactly_one_factor_and_the_genome(space):
    rng = random.Random(1)
    for _ in range(300):
        parent = space.sample(rng)
        child, factor = space.mutate(parent, rng)
        diff = [k for k in parent if parent[k] != child[k]]
        assert diff == [factor]
        assert space.decode(child) != space.decode(parent)   # an effective factor, never a dormant gene
        space.validate(space.repair(child))


def test_mutation_without_width_never_touches_d_model():
    space, rng = StagedSpace(), random.Random(2)
    for _ in range(200):
        _, factor = space.mutate(space.sample(rng), rng, include_width=False)
        assert factor != "d_model"


def test_staged_decode_pattern():
    space = StagedSpace()
    p = {"d_model": 2048}
    for s, (a, b, ratio, ffn, blocks) in enumerate([("mamba2", "deltanet", "1:1", 1, 2),
                                                    ("mamba2", "attention", "1:3", 0, 1),
                                                    ("deltanet", "deltanet", "0:1", 2, 1)]):
        p.update({f"s{s}_a": a, f"s{s}_b": b, f"s{s}_ratio": ratio, f"s{s}_ffn": ffn, f"s{s}_blocks": blocks})
    g = space.decode(p)
    assert g.summary() == "D F M2 F D F M2 F A M2 M2 M2 D F F"
    assert (g.n_heads, g.n_kv_heads) == (16, 4)


def test_repair_enforces_operator_limit_and_is_idempotent():
    space = StagedSpace(max_operators=30)
    p = {"d_model": 1024}
    for s in range(3):
        p.update({f"s{s}_a": "mamba2", f"s{s}_b": "attention", f"s{s}_ratio": "1:3", f"s{s}_ffn": 2,
                  f"s{s}_blocks": 4})
    assert space.n_operators(p) == 144
    fixed = space.repair(p)
    assert space.n_operators(fixed) <= 30
    assert space.repair(fixed) == fixed
    ok = space.sample(random.Random(0))
    assert space.repair(ok) == ok


def test_repair_impossible_limit_is_a_clear_error():
    with pytest.raises(FlashsearchError, match="max_operators"):
        StagedSpace(max_operators=2)


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_encode_decode_round_trip(space):
    rng = random.Random(3)
    for _ in range(30):
        g = space.decode(space.sample(rng))
        p = space.encode(g)
        assert p is not None and space.decode(p) == g


def test_encode_rejects_genomes_outside_the_space():
    space = StagedSpace()
    g = space.decode(space.sample(random.Random(4)))
    assert space.encode(g.with_width(4096)) is None               # width not in the list
    assert space.encode(g.with_layers(("gla", "ffn"))) is None     # operator not in the space


def test_cheapest_candidates_are_smallest():
    space = StagedSpace()
    cheapest = space.cheapest()
    assert cheapest
    for p in cheapest:
        g = space.decode(p)
        assert g.d_model == min(space.widths) and g.n_layers == 3


def test_bad_space_settings():
    with pytest.raises(FlashsearchError, match="unknown operator"):
        StagedSpace(operators=("attention", "lstm"))
    with pytest.raises(FlashsearchError, match="ffn"):
        StagedSpace(operators=("attention", "ffn"))
    with pytest.raises(FlashsearchError, match="ratio"):
        StagedSpace(ratios=("2:1",))
    with pytest.raises(FlashsearchError, match="min_layers"):
        LayerwiseSpace(min_layers=10, max_layers=4)
