"""Learned latency predictor: recovers known coefficients, JSON round trip, out-of-range warning, fit CLI."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pandas as pd
import pytest

from flashsearch.cli import main
from flashsearch.errors import FlashsearchError
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.learned import (FEATURE_OPERATORS, FEATURES, LearnedPredictor, LearnedRangeWarning,
                                                 Measurement, features, read_measurements)
from flashsearch.proxies.latency.machine import OtherMachineWarning, cpu_name
from flashsearch.proxies.latency.profile import ProfileRecipe

RECIPE = ProfileRecipe()
TRUE = {"const": 2e-4, "vocab_x_d": 3e-10, "n_ffn_x_d2": 4e-9, "n_attention": 6e-5, "n_mamba2_x_d": 5e-7,
        "n_deltanet": 9e-5, "attention_kv_x_ctx": 2e-9}


def synthetic(n: int, seed: int, true: dict[str, float] = TRUE) -> list[Measurement]:
    rng = random.Random(seed)
    coef = np.array([true.get(k, 0.0) for k in FEATURES])
    rows = []
    for _ in range(n):
        layers = [rng.choice(["attention", "mamba2", "deltanet", "ffn"]) for _ in range(rng.randint(2, 24))]
        layers[0] = "mamba2"                                                  # always a mixer
        g = RECIPE.genome(layers, rng.choice([64, 96, 128, 160, 192]), rng.choice([256, 1024]))
        wl = Workload(device="cpu", prompt_len=rng.choice([0, 32, 128]), decode_tokens=rng.choice([64, 256]))
        rows.append(Measurement(g, wl, float(features(g, wl) @ coef) * wl.decode_tokens))
    return rows


def test_recovers_known_coefficients() -> None:
    model = LearnedPredictor.fit(synthetic(120, 0), alpha=1e-10)
    got = model.coefficients()
    for k, v in TRUE.items():
        assert got[k] == pytest.approx(v, rel=0.03), k
    assert sum(abs(got[k]) for k in FEATURES if k not in TRUE) < 0.02 * sum(TRUE.values())
    assert model.train_mape < 1e-3
    for m in synthetic(20, 1):                                                  # unseen genomes
        assert model.predict(m.genome, m.workload) == pytest.approx(m.seconds, rel=0.01)


def test_measurements_that_favour_a_layer_cannot_make_it_free_time() -> None:
    """Rows in which every DeltaNet layer seems to save time (a confounded or noisy measurement) pull a least-squares
    fit below zero for it. The fit stays physical: no coefficient is negative, so adding a layer of any kind or
    widening the model never lowers a prediction."""
    rows = synthetic(120, 7, {**TRUE, "n_deltanet": -4e-6})
    assert min(m.seconds for m in rows) > 0
    base = RECIPE.genome(["mamba2", "ffn", "attention", "ffn"] * 2, 128, 256)
    deeper = base.with_layers(base.layer_types + ("deltanet",))
    wl = Workload(device="cpu", prompt_len=32, decode_tokens=64)
    x = np.stack([features(m.genome, m.workload) for m in rows])
    y = np.array([m.seconds / m.workload.decode_tokens for m in rows])
    unconstrained = np.linalg.lstsq(x, y, rcond=None)[0]
    assert features(deeper, wl) @ unconstrained < features(base, wl) @ unconstrained   # the data pulls that way

    model = LearnedPredictor.fit(rows, alpha=1e-10)
    assert min(model.coefficients().values()) >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LearnedRangeWarning)
        before = model.predict(base, wl)
        for op in FEATURE_OPERATORS:
            assert model.predict(base.with_layers(base.layer_types + (op,)), wl) >= before, op
        widths = [model.predict(RECIPE.genome(base.layer_types, d, 256), wl) for d in (64, 96, 128, 160, 192)]
    assert widths == sorted(widths)


def test_json_round_trip(tmp_path) -> None:
    model = LearnedPredictor.fit(synthetic(40, 2), alpha=1e-3, meta={"note": "test"})
    path = model.save(tmp_path / "m.json")
    data = json.loads(path.read_text())                                         # data, not a pickle
    assert data["format"] == "flashsearch-learned/1" and data["features"] == list(FEATURES)
    again = LearnedPredictor(str(path))
    assert again.source == f"learned:cpu[{cpu_name()}]" and again.meta["note"] == "test"   # fitted here
    assert again.meta["device_name"] == cpu_name() and again.meta["torch"] and again.meta["threads"] >= 1
    m = synthetic(1, 3)[0]
    assert again.predict(m.genome, m.workload) == model.predict(m.genome, m.workload)


def test_warns_or_raises_outside_training_range() -> None:
    data = LearnedPredictor.fit(synthetic(40, 4)).to_dict()
    model = LearnedPredictor(data)
    wl = Workload(device="cpu", decode_tokens=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(RECIPE.genome(["mamba2", "ffn"] * 5, 128, 256), wl)       # inside: silent
    far = RECIPE.genome(["mamba2", "ffn"] * 20, 1024, 256)
    with pytest.warns(LearnedRangeWarning) as rec:
        model.predict(far, wl)
    msg = str(rec[0].message)
    assert msg.startswith("[flashsearch learned] genome far outside the training range") and "\n" not in msg
    assert "d_model=1024" in msg and "n_layers=40" in msg
    with pytest.raises(FlashsearchError, match="far outside"):
        LearnedPredictor(data, strict=True).predict(far, wl)
    with pytest.raises(FlashsearchError, match="fitted on 'cpu'"):
        LearnedPredictor(data, device="h100")


def test_fit_cli_from_csv(tmp_path, capsys) -> None:
    rows = synthetic(30, 5)
    csv = tmp_path / "m.csv"
    pd.DataFrame([{"genome_json": m.genome.to_json(), "prompt_len": m.workload.prompt_len,
                   "decode_tokens": m.workload.decode_tokens, "seconds": m.seconds,
                   "device_name": "Measured Elsewhere CPU"} for m in rows]).to_csv(csv)
    assert len(read_measurements(csv)) == 30
    out = tmp_path / "model.json"
    assert main(["latency", "fit", str(csv), "--out", str(out)]) == 0
    assert "30 measurements" in capsys.readouterr().out
    model = LearnedPredictor(str(out), device="cpu")
    # The model records the machine that measured its rows, not the one that ran the fit, and says so.
    assert model.source == "learned:cpu[Measured Elsewhere CPU]"
    with pytest.warns(OtherMachineWarning, match=r"made on cpu\[Measured Elsewhere CPU\], not on this machine"):
        assert model.predict(rows[0].genome, rows[0].workload) == pytest.approx(rows[0].seconds, rel=0.1)


def test_fit_rejects_bad_input(tmp_path, capsys) -> None:
    with pytest.raises(FlashsearchError, match="at least 3"):
        LearnedPredictor.fit(synthetic(2, 6))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["latency", "fit", str(bad), "--out", str(tmp_path / "x.json")]) == 2
    assert "lacks column" in capsys.readouterr().err
