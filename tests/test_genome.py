import dataclasses
import json
import subprocess
import sys

import pytest

from factories import TINY_OPTIONS, tiny_genome
from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome


def test_canonical_json_round_trip_and_stable_id():
    g = tiny_genome()
    again = Genome.from_json(g.to_json())
    assert again == g and again.id == g.id and hash(again) == hash(g)
    # key order in op_options and aliases in layer_types do not change identity
    reordered = {op: dict(reversed(list(o.items()))) for op, o in reversed(list(TINY_OPTIONS.items()))}
    h = Genome(layer_types=("d", "f", "m2", "f", "a", "f"), d_model=g.d_model, n_heads=g.n_heads,
               n_kv_heads=g.n_kv_heads, head_dim=g.head_dim, vocab_size=g.vocab_size, op_options=reordered)
    assert h.id == g.id and h.to_json() == g.to_json()
    assert json.loads(g.to_json())["layer_types"][0] == "deltanet"
    assert len(g.id) == 12 and int(g.id, 16) >= 0


def test_id_changes_with_any_field():
    changes = [dict(d_model=96), dict(n_heads=8), dict(n_kv_heads=4), dict(head_dim=32), dict(ffn_ratio=2.5),
               dict(vocab_size=257), dict(op_options={"mamba2": {"d_state": 32}}), dict(layer_types=("mamba2", "ffn"))]
    ids = [tiny_genome(**c).id for c in changes]
    assert len({tiny_genome().id, *ids}) == 1 + len(changes)


def test_genome_is_immutable():
    g = tiny_genome()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.d_model = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        g.op_options["mamba2"]["d_state"] = 3  # type: ignore[index]


@pytest.mark.parametrize("kw,needle", [
    (dict(layer_types=()), "empty"),
    (dict(layer_types=("ffn", "ffn")), "no token mixer"),
    (dict(layer_types=("attention", "transformer")), "unknown operator 'transformer'"),
    (dict(d_model=0), "d_model must be a positive integer"),
    (dict(n_heads=4, n_kv_heads=3), "not a multiple of n_kv_heads"),
    (dict(ffn_ratio=-1.0), "ffn_ratio"),
    (dict(op_options={"mamba3": {}}), "unknown operator 'mamba3' in op_options"),
])
def test_validation_messages(kw, needle):
    with pytest.raises(FlashsearchError, match=needle):
        tiny_genome(**kw)


def test_from_dict_rejects_unknown_keys_and_fills_heads():
    with pytest.raises(FlashsearchError, match="unknown key"):
        Genome.from_dict({"layer_types": ["attention"], "d_model": 64, "depth": 3})
    g = Genome.from_dict({"layer_types": ["attention"], "d_model": 256, "head_dim": 64})
    assert (g.n_heads, g.n_kv_heads) == (4, 4)


def test_scaled_keeps_layers_and_gqa_group():
    g = tiny_genome(d_model=2048, n_heads=16, n_kv_heads=4, head_dim=128)
    s = g.scaled(96, 16, vocab_size=256)
    assert s.layer_types == g.layer_types
    assert (s.d_model, s.n_heads, s.head_dim, s.vocab_size) == (96, 6, 16, 256)
    assert s.n_heads % s.n_kv_heads == 0 and s.n_kv_heads < s.n_heads


def test_genome_and_registry_import_without_torch():
    """The genome and the operator registry are torch-free to import (the built-in operators load on first use)."""
    code = ("import sys, flashsearch.genome, flashsearch.operators, flashsearch.space; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]


def test_summary_letters_come_from_the_registry_and_parse_back():
    g = tiny_genome(layer_types=("deltanet", "ffn", "mamba2", "swa", "gated_deltanet", "gla", "attention", "mlp"))
    assert g.summary() == "D F M2 S GD G A F"
    assert tiny_genome(layer_types=tuple(g.summary().split())) == g


def test_op_options_are_checked_when_the_genome_is_built():
    with pytest.raises(FlashsearchError, match=r"operator 'mamba2' does not support option\(s\) dstate "
                                               r"\(in op_options.mamba2\); supported: d_state"):
        tiny_genome(op_options={"m2": {"dstate": 16}})
    with pytest.raises(FlashsearchError, match=r"'deltanet' option conv_size=True \(in op_options.deltanet\)"):
        tiny_genome(op_options={"deltanet": {"conv_size": True}})
