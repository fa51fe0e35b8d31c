"""`flashsearch latency validate`: rank statistics on known inputs, and the command on a tiny sample."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from factories import tiny_genome
from flashsearch.cli import main
from flashsearch.errors import FlashsearchError
from flashsearch.model import count_parameters
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.lut import LutPredictor
from flashsearch.proxies.latency.machine import cpu_name
from flashsearch.proxies.latency.validate import ValidationContext, fits_on_measurements, rank_stats, validate


def test_rank_stats_known_values() -> None:
    s = rank_stats([1, 2, 3, 4], [10, 20, 30, 40])
    assert s["kendall_tau"] == pytest.approx(1.0) and s["spearman"] == pytest.approx(1.0)
    assert s["mape"] == pytest.approx(0.9)                                   # every prediction is 10x too small
    s = rank_stats([4, 3, 2, 1], [1, 2, 3, 4])
    assert s["kendall_tau"] == pytest.approx(-1.0) and s["spearman"] == pytest.approx(-1.0)
    # One swapped pair of 6: tau = (5 - 1) / 6; Spearman = 1 - 6 * 2 / (4 * 15).
    s = rank_stats([1, 3, 2, 4], [1, 2, 3, 4])
    assert s["kendall_tau"] == pytest.approx(4 / 6) and s["spearman"] == pytest.approx(0.8)
    assert rank_stats([1.1, 1.8], [1.0, 2.0])["mape"] == pytest.approx(0.1)
    with pytest.raises(FlashsearchError):
        rank_stats([1.0], [1.0])


def test_validate_json_on_a_tiny_sample(tmp_path, capsys) -> None:
    out = tmp_path / "val"
    code = main(["latency", "validate", "--predictor", "lut", "--predictor", "learned", "--predictor", "roofline",
                 "--n", "4", "--n-train", "5", "--widths", "64", "--vocab", "256", "--prompt-len", "4",
                 "--decode-tokens", "4", "--repeats", "1", "--json", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["meta"]["n"] == 4 and result["meta"]["n_train"] == 5 and len(result["measured"]) == 4
    here = cpu_name()
    shipped = LutPredictor().device_name                              # the CPU the shipped table was profiled on
    for name, source in (("lut", f"lut:cpu[{shipped}]"), ("learned", f"learned:cpu[{here}]"),
                         ("roofline", "roofline:cpu")):
        r = result["predictors"][name]
        assert r["source"] == source
        assert -1 <= r["kendall_tau"] <= 1 and r["mape"] >= 0 and len(r["predicted"]) == 4
        assert len(r["worst"]) == 4
    assert result["predictors"]["learned"]["n_train"] == 5                   # fitted on its own split
    assert (out / "scatter.png").stat().st_size > 1000
    assert (out / "learned_cpu.json").is_file() and (out / "measurements.csv").is_file()
    assert set(pd.read_csv(out / "measurements.csv")["device_name"]) == {here}   # `latency fit` can tell the CPU
    assert "measure: round 1/1" in captured.err                               # progress on stderr


def test_validate_bad_input_is_one_line(capsys) -> None:
    code = main(["latency", "validate", "--predictor", "lut", "--n", "1"])
    assert code == 2 and capsys.readouterr().err.startswith("error: ")


# ---- predictors declare what validation needs: no line in validate.py for any one of them ----------------------
def _context(train=()) -> ValidationContext:
    return ValidationContext(workload=Workload(device="cpu", batch=1, prompt_len=4, decode_tokens=8), table=None,
                             roofline_device="cpu", train=list(train), out=None)


def test_validate_scores_user_predictors_by_what_their_classes_declare(plugins_on_path) -> None:
    genomes = [tiny_genome(d_model=d) for d in (32, 48, 64, 96)]
    train = [(tiny_genome(d_model=d), count_parameters(tiny_genome(d_model=d)) * 3e-9) for d in (40, 80)]
    measured = [count_parameters(g) * 3e-9 for g in genomes]       # the rate the fitted plug-in must recover
    plain, fitted = "my_predictor.ParamsPredictor", "my_predictor.FittedParamsPredictor"
    assert not fits_on_measurements([plain, "lut", "roofline"]) and fits_on_measurements([plain, fitted])
    assert fits_on_measurements(["learned"])
    r = validate([plain, fitted], genomes, measured, _context(train))
    assert r[plain]["source"] == "plugin:params" and r[plain]["kendall_tau"] == pytest.approx(1.0)
    assert r[plain]["mape"] == pytest.approx(1 - 1e-8 * 8 / 8192 / 3e-9)            # its default rate, scaled
    assert "n_train" not in r[plain]                                                  # built plainly: not fitted
    assert r[fitted]["source"] == "plugin:fitted-params" and r[fitted]["n_train"] == 2
    assert r[fitted]["mape"] == pytest.approx(0.0, abs=1e-9) and r[fitted]["train_mape"] == pytest.approx(0.0, abs=1e-9)


def test_an_unknown_predictor_fails_before_anything_is_timed(capsys) -> None:
    code = main(["latency", "validate", "--predictor", "lut", "--predictor", "nowhere.Predictor", "--n", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot import module 'nowhere'" in err and "measure:" not in err
