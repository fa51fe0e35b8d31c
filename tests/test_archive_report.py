"""Trials table, Pareto front, hypervolume, atomic writes, report files and exported configs."""

import json
import random

import numpy as np
import optuna
import pandas as pd
import pytest

from factories import full_size_genome, run_config
from flashsearch.atomic import atomic_path, write_text_atomic
from flashsearch.errors import FlashsearchError, TrialFailed
from flashsearch.export import MODEL_TYPE, export_top, genome_from_hf_config, hf_config_dict
from flashsearch.genome import Genome
from flashsearch.pareto import hypervolume, pareto_front, pareto_mask, rank_front
from flashsearch.report import write_report
from flashsearch.search import AgingEvolutionSampler, run_search
from flashsearch.space import StagedSpace
from flashsearch.trials import COLUMNS, trials_frame, write_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = StagedSpace()


def toy_eval(genome_json: str) -> dict:
    g = Genome.from_json(genome_json)
    if g.layer_types[0] == "attention" and g.n_layers > 20:
        raise TrialFailed("loss diverged (nan)")
    loss = 3.0 - 0.03 * g.n_mixers - 0.0002 * g.d_model + 0.05 * g.count("attention")
    return {"loss": loss, "latency": g.n_layers * g.d_model / 1000.0, "latency_source": "roofline:h100",
            "proxy_params": 1000 + g.n_layers, "metric": "val_bpb", "curve": [(1, 3.0)]}


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    s = optuna.create_study(directions=["minimize", "minimize"],
                            sampler=AgingEvolutionSampler(SPACE, population=6, sample_size=3, seed=0))
    run_search(s, SPACE, toy_eval, run_config(25, 2))
    return s


# ---- Pareto front and hypervolume on known inputs ---------------------------------------------------------------
def test_pareto_mask_known_points():
    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3), (5, 1), (1, 6)]
    #       front  front  dom    front  equal  dom    dom (same x, worse y)
    assert pareto_mask(pts).tolist() == [True, True, False, True, True, False, False]
    assert pareto_mask([]).tolist() == []


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = rng.integers(0, 8, size=(rng.integers(1, 30), 2)).astype(float)
        brute = [not any((q <= p).all() and (q < p).any() for q in pts) for p in pts]
        assert pareto_mask(pts).tolist() == brute


def frame(rows):
    df = pd.DataFrame(rows, columns=["number", "state", "quality", "latency", "genome_id"])
    return df


def test_pareto_front_on_known_frame():
    df = frame([
        (0, "COMPLETE", 3.0, 1.0, "a"),
        (1, "COMPLETE", 2.0, 2.0, "b"),
        (2, "COMPLETE", 2.5, 3.0, "c"),       # dominated by 1
        (3, "FAIL", float("nan"), float("nan"), "d"),
        (4, "COMPLETE", 1.0, 5.0, "e"),
        (5, "COMPLETE", 2.0, 2.0, "b"),       # cached replay of 1: dropped
        (6, "RUNNING", float("nan"), float("nan"), "f"),
    ])
    front = pareto_front(df)
    assert front["number"].tolist() == [0, 1, 4]           # sorted by latency
    assert front["latency"].is_monotonic_increasing


def test_rank_front_under_target():
    df = frame([(0, "COMPLETE", 3.0, 1.0, "a"), (1, "COMPLETE", 2.0, 2.0, "b"), (2, "COMPLETE", 1.0, 5.0, "c")])
    assert rank_front(df)["number"].tolist() == [2, 1, 0]
    assert rank_front(df, target_latency=2.5)["number"].tolist() == [1, 0, 2]


def test_hypervolume_known_values():
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == pytest.approx(6.0)
    # dominated points and points outside the reference box add nothing
    assert hypervolume([(1, 3), (2, 2), (3, 1), (3, 3), (5, 0), (0, 5)], (4, 4)) == pytest.approx(6.0)
    assert hypervolume([(0, 0)], (2, 3)) == pytest.approx(6.0)
    assert hypervolume([], (1, 1)) == 0.0
    assert hypervolume([(1, 1)], (1, 2)) == 0.0  # on the reference boundary


def test_hypervolume_matches_grid_count():
    rng = random.Random(0)
    for _ in range(20):
        pts = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(rng.randint(1, 8))]
        cells = sum(any(px <= x and py <= y for px, py in pts) for x in range(10) for y in range(10))
        assert hypervolume(pts, (10, 10)) == pytest.approx(cells)


# ---- atomic writes -------------------------------------------------------------------------------------------
def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_text_atomic(path, "one")                          # creates the folder; a new file is world-readable
    assert path.read_text() == "one" and path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "one"                        # the previous file is intact
    write_text_atomic(path, "two")
    assert path.read_text() == "two" and path.stat().st_mode & 0o777 == 0o600   # a replaced file keeps its mode
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]                # no temporary files left behind


# ---- trials table ----------------------------------------------------------------------------------------------
def test_trials_frame_columns_and_values(study):
    df = trials_frame(study)
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(df) == len(study.trials)
    done = df[df["state"] == "COMPLETE"]
    assert len(done) == 25
    assert done["quality"].notna().all() and done["latency_source"].eq("roofline:h100").all()
    assert (done["metrics.proxy_params"] == 1000 + done["n_layers"]).all()
    assert done["summary"].str.len().gt(0).all()
    row = done.iloc[0]
    assert json.loads(row["params"]) == study.trials[int(row["number"])].params
    assert Genome.from_json(row["genome_json"]).id == row["genome_id"]
    failed = df[df["state"] == "FAIL"]
    assert (failed["error"] == "loss diverged (nan)").all()
    assert failed["quality"].isna().all()
    assert set(df["origin"].dropna()) <= {"random", "mutation", "random-dedup", "enqueued"}


def test_trials_frame_of_empty_study_and_parquet_roundtrip(tmp_path, study):
    empty = optuna.create_study(directions=["minimize", "minimize"])
    assert list(trials_frame(empty).columns) == list(COLUMNS)
    path = write_trials(study, tmp_path / "trials.parquet")
    back = pd.read_parquet(path)
    assert len(back) == len(study.trials) and "metrics.proxy_params" in back.columns
    write_trials(empty, tmp_path / "empty.parquet")
    assert len(pd.read_parquet(tmp_path / "empty.parquet")) == 0


# ---- report --------------------------------------------------------------------------------------------------------
def test_write_report_files(tmp_path, study):
    paths = write_report(study, tmp_path / "report", target_latency=30.0)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["html"].read_text()
    assert "Plotly.newPlot" in html and "<script src=" not in html  # plotly.js inlined: opens offline
    front = pareto_front(trials_frame(study))
    assert f"trial #{front['number'].iloc[0]}" in html
    assert "predicted decode latency (s) [roofline:h100]" in html
    assert len(pd.read_parquet(paths["trials"])) == len(study.trials)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "hypervolume.csv", "hypervolume.png", "pareto.html", "pareto.png", "ranking.md", "trials.parquet"]


def test_write_report_on_empty_study(tmp_path):
    empty = optuna.create_study(directions=["minimize", "minimize"])
    paths = write_report(empty, tmp_path)
    assert all(p.exists() for p in paths.values())


# ---- export ----------------------------------------------------------------------------------------------------------
def test_hf_config_dict_round_trips_the_genome():
    g = full_size_genome(op_options={"mamba2": {"d_state": 128}})
    cfg = hf_config_dict(g)
    assert cfg["model_type"] == MODEL_TYPE and cfg["architectures"] == ["FlashsearchForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == \
           (2048, 16, 4, 128)
    assert cfg["intermediate_size"] == 6144 and cfg["num_hidden_layers"] == 6 and cfg["tie_word_embeddings"]
    assert cfg["op_options"] == {"mamba2": {"d_state": 128}}
    assert genome_from_hf_config(json.loads(json.dumps(cfg))) == g


def test_export_top_writes_loadable_configs(tmp_path, study):
    out = tmp_path / "export"
    (out / "9-0123456789ab").mkdir(parents=True)     # a stale export from an earlier run: replaced
    (out / "notes").mkdir()                          # anything else: left alone
    folders = export_top(study, out, top=3, target_latency=30.0)
    assert [f.name.split("-")[0] for f in folders] == ["1", "2", "3"]
    assert sorted(p.name for p in out.iterdir()) == sorted([f.name for f in folders] + ["notes"])
    configs = [json.loads((f / "config.json").read_text()) for f in folders]
    ranked = rank_front(trials_frame(study), 30.0)
    for rank, (folder, cfg) in enumerate(zip(folders, configs), start=1):
        meta = cfg["flashsearch"]
        row = ranked.iloc[rank - 1]
        assert meta["rank"] == rank and meta["trial_number"] == row["number"]
        assert folder.name == f"{rank}-{meta['genome_id']}"
        assert meta["loss"] == pytest.approx(row["quality"]) and meta["latency_source"] == "roofline:h100"
        g = genome_from_hf_config(cfg)
        assert g.id == meta["genome_id"] == Genome.from_dict(meta["genome"]).id
        for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                    "vocab_size", "layer_types", "num_hidden_layers", "tie_word_embeddings", "op_options"):
            assert key in cfg
    meets = [c["flashsearch"]["meets_target"] for c in configs]
    assert meets == sorted(meets, reverse=True)  # those meeting the target come first
    losses = [c["flashsearch"]["loss"] for c, m in zip(configs, meets) if m]
    assert losses == sorted(losses)


def test_export_from_frame_and_errors(tmp_path, study):
    folders = export_top(trials_frame(study), tmp_path, top=1000)
    assert len(folders) == len(pareto_front(trials_frame(study)))
    with pytest.raises(FlashsearchError, match="no complete trials"):
        export_top(optuna.create_study(directions=["minimize", "minimize"]), tmp_path / "x", top=1)
    with pytest.raises(FlashsearchError):
        export_top(study, tmp_path, top=0)
