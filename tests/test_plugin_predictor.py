"""A predictor class from an outside module, named by latency._target_, drives a tiny search end to end."""

from __future__ import annotations

import pandas as pd

from factories import HYBRID_YAML, TINY_RUN
from flashsearch.cli import main


def test_user_predictor_is_used_and_recorded(tmp_path, plugins_on_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["run", HYBRID_YAML, *TINY_RUN, "search.trials=2", "budget.tokens=2048",
                 "latency._target_=my_predictor.ParamsPredictor", "latency.seconds_per_param=2e-8", f"out_dir={out}"])
    assert code == 0, capsys.readouterr().err
    trials = pd.read_parquet(out / "trials.parquet")
    done = trials[trials["state"] == "COMPLETE"]
    assert len(done) >= 2
    assert set(done["latency_source"]) == {"plugin:params"}
    # The latency is the plugin's number: params x 2e-8 x 8192 / 8192.
    params = done["metrics.params"].astype(float)
    assert ((done["latency"] - params * 2e-8).abs() <= 1e-6 * done["latency"]).all()
