"""`flashsearch report OUT_DIR` rebuilds everything from the study alone, including the hypervolume-over-evaluations
plot and the ranked markdown table."""

import json
import math
import random

import optuna
import pandas as pd
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from flashsearch.cli import main
from flashsearch.errors import TrialFailed
from flashsearch.genome import Genome
from flashsearch.pareto import hypervolume
from flashsearch.report import hypervolume_curve, nondominated_ranks, ranking_table, reference_point
from flashsearch.search import AgingEvolutionSampler, run_search
from flashsearch.search.recovery import enqueue_seeds
from flashsearch.space import StagedSpace
from flashsearch.trials import trials_frame
from factories import run_config

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = StagedSpace()


def toy_eval(genome_json: str) -> dict:
    g = Genome.from_json(genome_json)
    if g.n_layers > 26:
        raise TrialFailed("too deep")
    return {"loss": 3.0 - 0.03 * g.n_mixers - 0.0002 * g.d_model + 0.05 * g.count("attention"),
            "latency": g.n_layers * g.d_model / 1000.0, "latency_source": "roofline:h100", "params": 1e6 * g.n_layers}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    study = optuna.create_study(study_name="r", storage=storage, directions=["minimize", "minimize"],
                                sampler=AgingEvolutionSampler(SPACE, population=6, sample_size=3, seed=0))
    p = SPACE.sample(random.Random(3))
    enqueue_seeds(study, [p, p], SPACE)
    run_search(study, SPACE, toy_eval, run_config(20, 2))
    return out


def test_report_cli_writes_hypervolume_and_ranking_from_the_study_alone(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    for name in ("trials.parquet", "pareto.png", "pareto.html", "hypervolume.png", "hypervolume.csv", "ranking.md"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "hypervolume.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    df = pd.read_parquet(run_dir / "trials.parquet")
    curve = pd.read_csv(run_dir / "hypervolume.csv")
    evaluated = df[df["state"].isin(["COMPLETE", "FAIL"]) & df["cached_from"].isna()]
    assert list(curve["evaluations"]) == list(range(1, len(evaluated) + 1))
    assert curve["hypervolume"].is_monotonic_increasing and (curve["normalized"] <= 1 + 1e-9).all()
    done = df[df["state"] == "COMPLETE"]
    ref = reference_point(df)
    assert curve["hypervolume"].iloc[-1] == pytest.approx(hypervolume(done[["quality", "latency"]].to_numpy(), ref))

    md = (run_dir / "ranking.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| rank")]
    n_unique = done["genome_id"].nunique()
    assert len(rows) == min(50, n_unique)  # the cached replay of the seed is listed once
    first = rows[0].split("|")
    assert first[1].strip() == "1" and first[2].strip() == "1"  # rank 1 is on the Pareto front
    best_front_loss = df.loc[df["number"] == int(first[3].strip().lstrip("#")), "quality"].item()
    assert best_front_loss == pytest.approx(done["quality"].min())


def test_ranking_orders_by_front_then_loss_and_target_first():
    df = pd.DataFrame({"number": [0, 1, 2, 3, 4], "state": ["COMPLETE"] * 4 + ["FAIL"],
                       "quality": [1.0, 2.0, 1.5, 3.0, math.nan], "latency": [5.0, 1.0, 6.0, 0.5, math.nan],
                       "genome_id": list("abcde"), "cached_from": [None] * 5, "summary": ["x"] * 5,
                       "d_model": [1] * 5, "n_layers": [1] * 5, "latency_source": ["t"] * 5})
    # front 0: #0 (1.0, 5), #1 (2.0, 1), #3 (3.0, 0.5); front 1: #2 (1.5, 6)
    assert list(nondominated_ranks(df.loc[:3, ["quality", "latency"]].to_numpy())) == [0, 0, 1, 0]
    assert list(ranking_table(df)["number"]) == [0, 1, 3, 2]
    assert list(ranking_table(df, target_latency=2.0)["number"]) == [1, 3, 0, 2]
    curve = hypervolume_curve(df, reference=(4.0, 7.0))
    assert list(curve["evaluations"]) == [1, 2, 3, 4, 5]
    assert curve["hypervolume"].iloc[0] == pytest.approx(3.0 * 2.0)
    assert curve["hypervolume"].iloc[-1] == pytest.approx(hypervolume([(1, 5), (2, 1), (1.5, 6), (3, .5)], (4, 7)))


def test_report_of_an_empty_study(tmp_path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    optuna.create_study(study_name="e", storage=storage, directions=["minimize", "minimize"])
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "hypervolume.png").is_file() and "0 of 0" in (tmp_path / "ranking.md").read_text()


def test_wandb_logger_writes_an_offline_run_under_out_dir(tmp_path, monkeypatch, plugins_on_path):
    """logger=wandb, offline (wandb is in the dev extra, so this runs in CI; nothing leaves the machine): one
    history row per finished trial and the Pareto table, in OUT_DIR/wandb/."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    cfg = {"name": "wb", "out_dir": str(out), "logger": "wandb", "export_top": 1, "ray": {"address": "local"},
           "space": {"kind": "layerwise", "operators": ["attention", "mamba2", "deltanet", "ffn"],
                     "widths": [1024, 2048], "min_layers": 2, "max_layers": 8},
           "quality": {"_target_": "fs_test_plugins.SleepyQuality", "sleep_s": 0.0},
           "search": {"trials": 4, "population": 2, "sample_size": 1, "workers": 1}}
    (tmp_path / "wb.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "wb.yaml")]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    # history rows are protobuf records holding JSON values; each carries these keys
    assert log.count(b"best_latency_s") >= 4 and b"latency_s" in log and b"params_b" in log
    pareto = json.loads(next((runs[0] / "files" / "media" / "table").glob("pareto_*.table.json")).read_text())
    assert pareto["columns"][:4] == ["rank", "trial", "loss", "latency_s"]
    df = trials_frame(optuna.load_study(study_name="wb", storage=JournalStorage(
        JournalFileBackend(str(out / "study.journal")))))
    ranked = [row[1] for row in pareto["data"]]
    assert set(ranked) <= set(df["number"]) and len(ranked) >= 1
    assert all(row[6] is not None and row[6] > 0 for row in pareto["data"])  # params (billions)


def test_wandb_missing_is_one_line_install_hint(monkeypatch):
    import builtins

    from flashsearch.errors import FlashsearchError
    from flashsearch.logging_wandb import require_wandb

    real_import = builtins.__import__

    def no_wandb(name, *a, **kw):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError("No module named 'wandb'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(FlashsearchError, match=r"pip install 'flashsearch\[wandb\]'") as e:
        require_wandb()
    assert "\n" not in str(e.value)
