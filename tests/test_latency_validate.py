"""`flashsearch latency validate`: rank statistics on known inputs, and the command on a tiny sample."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from flashsearch.cli import main
from flashsearch.errors import FlashsearchError
from flashsearch.proxies.latency.lut import LutPredictor
from flashsearch.proxies.latency.machine import cpu_name
from flashsearch.proxies.latency.validate import rank_stats


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
