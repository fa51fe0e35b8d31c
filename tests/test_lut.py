"""LUT latency predictor: sums equal a hand computation, interpolation, device refusal, extrapolation warnings,
and the profiler produces a table the predictor consumes."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from flashsearch.cli import main
from flashsearch.errors import FlashsearchError
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.lut import LutExtrapolationWarning, LutPredictor
from flashsearch.proxies.latency.machine import OtherMachineWarning, cpu_name
from flashsearch.proxies.latency.profile import TABLE_FORMAT, ProfileRecipe, profile_table

RECIPE = ProfileRecipe()


def synthetic_table(device_name: str | None = None) -> dict:
    # Profiled "here" unless told otherwise, so predictions from it are quiet on this machine.
    # attention: 1e-4 s at (w=64, c=0), +1e-6 s per context token; 3e-4 at w=128 with the same slope.
    return {
        "format": TABLE_FORMAT,
        "meta": {"device": "cpu", "device_name": device_name or cpu_name(), "recipe": RECIPE.to_dict()},
        "widths": [64, 128], "contexts": [0, 100], "vocabs": [256, 512],
        "ops": {"attention": [[1e-4, 2e-4], [3e-4, 4e-4]], "ffn": [[5e-5, 5e-5], [1e-4, 1e-4]]},
        "head": [[1e-5, 2e-5], [3e-5, 4e-5]],       # [vocab][width]
    }


def recipe_genome(layers, d=64, vocab=256):
    """A genome of the profiling recipe's shape (head_dim, KV group, FFN ratio): the shape a LUT row is timed on."""
    return RECIPE.genome(layers, d, vocab)


def predict_quiet(pred, g, wl):
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # in range: any warning fails the test ...
        warnings.simplefilter("ignore", OtherMachineWarning)  # ... but the shipped table's own CPU is not this one
        return pred.predict(g, wl)


def test_sum_equals_hand_computation() -> None:
    pred = LutPredictor(synthetic_table(), device="cpu")
    assert pred.source == f"lut:cpu[{cpu_name()}]"
    wl = Workload(device="cpu", prompt_len=0, decode_tokens=101)       # contexts 0..100, inside the grid
    got = predict_quiet(pred, recipe_genome(["attention", "ffn", "ffn"]), wl)
    attention = sum(1e-4 + 1e-6 * c for c in range(101))
    ffn = 2 * 101 * 5e-5
    head = 101 * 1e-5
    assert got == pytest.approx(attention + ffn + head, rel=1e-12)
    parts = pred.breakdown(recipe_genome(["attention", "ffn", "ffn"]), wl)
    assert parts["ffn"] == pytest.approx(ffn) and parts["embedding+lm_head"] == pytest.approx(head)


def test_interpolates_width_context_and_vocab() -> None:
    pred = LutPredictor(synthetic_table())
    # d=96 is halfway between the widths, vocab 384 halfway between the vocabs; context 10..59.
    wl = Workload(device="cpu", prompt_len=10, decode_tokens=50)
    got = predict_quiet(pred, recipe_genome(["attention"], d=96, vocab=384), wl)
    attention = sum(2e-4 + 1e-6 * c for c in range(10, 60))            # mean of the two width rows
    head = 50 * 2.5e-5
    assert got == pytest.approx(attention + head, rel=1e-12)


def test_refuses_other_device_and_unknown_operator() -> None:
    with pytest.raises(FlashsearchError, match="profiled on 'cpu'.*not 'h100'"):
        LutPredictor(synthetic_table(), device="h100")
    pred = LutPredictor(synthetic_table())
    with pytest.raises(FlashsearchError, match="workload.device='h100'"):
        pred.predict(recipe_genome(["attention"]), Workload())                  # the default workload targets an H100
    with pytest.raises(FlashsearchError, match="no entry for operator.*mamba2"):
        pred.predict(recipe_genome(["mamba2", "ffn"]), Workload(device="cpu", decode_tokens=4))


def test_extrapolation_warns_once_in_one_line_and_is_linear() -> None:
    pred = LutPredictor(synthetic_table())
    wl = Workload(device="cpu", prompt_len=0, decode_tokens=201)       # contexts up to 200 > 100 profiled
    with pytest.warns(LutExtrapolationWarning) as rec:
        got = pred.predict(recipe_genome(["attention"], d=192), wl)           # width 192 > 128 profiled
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "\n" not in msg and msg.startswith("[flashsearch lut] extrapolating")
    assert "d_model 192" in msg and "contexts 0..200" in msg
    # Linear extrapolation from the edge segments: w=192 -> 5e-4 + 1e-6 * c.
    expected = sum(5e-4 + 1e-6 * c for c in range(201)) + 201 * (1e-5 + (1e-5) * 2)
    assert got == pytest.approx(expected, rel=1e-12)


def test_recipe_mismatch_warns() -> None:
    pred = LutPredictor(synthetic_table())
    g = recipe_genome(["attention"]).scaled(64, head_dim=16)
    with pytest.warns(LutExtrapolationWarning, match="head_dim 16 != 32"):
        pred.predict(g, Workload(device="cpu", decode_tokens=4))


def test_long_decode_is_vectorized() -> None:
    pred = LutPredictor(synthetic_table())
    wl = Workload(device="cpu", prompt_len=0, decode_tokens=8192)
    with pytest.warns(LutExtrapolationWarning):
        got = pred.predict(recipe_genome(["attention", "ffn"] * 12), wl)
    c = np.arange(8192)
    expected = 12 * (1e-4 + 1e-6 * c).sum() + 12 * 8192 * 5e-5 + 8192 * 1e-5
    assert got == pytest.approx(expected, rel=1e-9)


def test_shipped_cpu_table_predicts_small_genomes() -> None:
    pred = LutPredictor()
    meta = pred.table["meta"]
    for key in ("device", "device_name", "torch", "threads", "date", "command"):
        assert meta[key] not in (None, ""), key
    assert set(pred.table["ops"]) == {"attention", "swa", "mamba2", "deltanet", "gated_deltanet", "gla", "ffn"}
    wl = Workload(device="cpu", prompt_len=32, decode_tokens=128)
    small = predict_quiet(pred, recipe_genome(["deltanet", "ffn"], d=64, vocab=1024), wl)
    big = predict_quiet(pred, recipe_genome(["deltanet", "ffn", "mamba2", "ffn", "attention", "ffn"] * 4, d=192,
                                     vocab=1024), wl)
    assert 0 < small < big


def test_profile_table_feeds_the_predictor(tmp_path, capsys) -> None:
    out = tmp_path / "t.json"
    code = main(["profile", "--device", "cpu", "--widths", "32,64", "--contexts", "0,8", "--ops", "ffn,attention",
                 "--vocabs", "64", "--steps", "2", "--repeats", "1", "--layers", "1", "--out", str(out)])
    assert code == 0
    table = json.loads(out.read_text())
    assert table["meta"]["command"].startswith("flashsearch profile --device cpu")
    assert np.asarray(table["ops"]["attention"]).shape == (2, 2) and np.asarray(table["head"]).shape == (1, 2)
    assert all(v > 0 for row in table["ops"]["ffn"] for v in row)
    pred = LutPredictor(str(out), device="cpu")
    assert pred.predict(recipe_genome(["attention", "ffn"], d=32, vocab=64), Workload(device="cpu", prompt_len=0, decode_tokens=4)) > 0
    assert "profile: round 1/1" in capsys.readouterr().err             # progress is shown


def test_profile_refuses_gpu_device(capsys) -> None:
    assert main(["profile", "--device", "h100"]) == 2
    assert "only cpu" in capsys.readouterr().err


def test_profile_table_rejects_bad_sizes() -> None:
    with pytest.raises(FlashsearchError, match="widths and vocabs must be positive integers"):
        profile_table(widths=[0], contexts=[0], ops=["ffn"])
    with pytest.raises(FlashsearchError, match="contexts >= 0"):
        profile_table(widths=[64], contexts=[-1], ops=["ffn"])


def test_a_table_from_another_cpu_warns_once_and_says_so_in_its_source() -> None:
    table = synthetic_table(device_name="Other Vendor CPU 9000")
    pred = LutPredictor(table, device="cpu")
    assert pred.source == "lut:cpu[Other Vendor CPU 9000]"
    wl = Workload(device="cpu", prompt_len=0, decode_tokens=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = pred.predict(recipe_genome(["attention"]), wl)
        second = pred.predict(recipe_genome(["attention"]), wl)
    other = [w for w in caught if issubclass(w.category, OtherMachineWarning)]
    assert first == second and len(other) == 1                       # once, however many predictions
    msg = str(other[0].message)
    assert "\n" not in msg and "Other Vendor CPU 9000" in msg and cpu_name() in msg
    assert "flashsearch profile" in msg


def test_a_table_that_records_no_machine_warns() -> None:
    table = synthetic_table()
    del table["meta"]["device_name"]
    pred = LutPredictor(table, device="cpu")
    assert pred.source == "lut:cpu"
    with pytest.warns(OtherMachineWarning, match="without recording its machine"):
        pred.predict(recipe_genome(["attention"]), Workload(device="cpu", prompt_len=0, decode_tokens=4))

