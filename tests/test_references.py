"""Reference models on the Pareto plots: predicted by the run's own predictor, stored in the study, drawn as
labelled markers (their trial's point when the search evaluated them, else a vertical line at their latency)."""

from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

import flashsearch.report as report
from flashsearch.trials import trials_frame
from flashsearch.builders import load_genome
from flashsearch.cli import main
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.roofline import RooflinePredictor
from flashsearch.references import REFERENCE_DIR, predict_references
from flashsearch.search import attrs

NAMES = ("Flash-1B", "Qwen3-0.6B", "Llama-3.2-1B")


@pytest.fixture()
def run_dir(tmp_path, plugins_on_path):
    """A 2-trial run over a space that holds Llama-3.2-1B exactly, seeded with it."""
    cfg = {
        "name": "refs", "seed": 0, "out_dir": str(tmp_path / "run"),
        "space": {"kind": "layerwise", "operators": ["attention", "ffn"], "widths": [2048], "min_layers": 30,
                  "max_layers": 32, "head_dim": 64, "kv_group": 4, "ffn_ratio": 4.0, "vocab_size": 128256,
                  "op_options": {"attention": {"rope_theta": 500000.0}}},
        "latency": {"_target_": "roofline"},
        "workload": {"device": "h100", "decode_tokens": 2048},
        "quality": {"_target_": "fs_test_plugins.SleepyQuality", "sleep_s": 0.0},
        "search": {"trials": 2, "population": 2, "sample_size": 1, "workers": 1,
                   "seeds": [str(REFERENCE_DIR / "llama3_2_1b.yaml")]},
        "ray": {"address": "local"}, "export_top": 1,
    }
    path = tmp_path / "refs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    return tmp_path / "run"


def load(out_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="refs", storage=JournalStorage(JournalFileBackend(str(out_dir / "study.journal"))))


def test_run_stores_reference_latencies_from_its_own_predictor_and_workload(run_dir):
    refs = load(run_dir).user_attrs[attrs.REFERENCES]
    assert [r["name"] for r in refs] == list(NAMES)
    predictor, workload = RooflinePredictor(device="h100"), Workload(device="h100", decode_tokens=2048)
    files = dict(zip(NAMES, ("nemotron_flash_1b.yaml", "qwen3_0_6b.yaml", "llama3_2_1b.yaml")))
    for r in refs:
        genome = load_genome(REFERENCE_DIR / files[r["name"]])
        assert r["genome_id"] == genome.id
        assert r["latency"] == pytest.approx(predictor.predict(genome, workload), rel=1e-9)
    # the paper's order at decode: Flash-1B is the fastest of the three
    lat = {r["name"]: r["latency"] for r in refs}
    assert lat["Flash-1B"] < lat["Llama-3.2-1B"] and lat["Flash-1B"] < lat["Qwen3-0.6B"]


def test_plots_mark_the_seeded_reference_and_draw_lines_for_the_others(run_dir, monkeypatch):
    study = load(run_dir)
    df = trials_frame(study)
    marks = {m["name"]: m for m in report.reference_marks(df, study.user_attrs[attrs.REFERENCES])}
    llama = df[df["genome_id"] == load_genome(REFERENCE_DIR / "llama3_2_1b.yaml").id].iloc[0]
    assert marks["Llama-3.2-1B"]["loss"] == pytest.approx(llama["quality"])  # evaluated as a seed: its point
    assert marks["Llama-3.2-1B"]["trial"] == llama["number"]
    assert marks["Flash-1B"]["loss"] is None and marks["Qwen3-0.6B"]["loss"] is None

    figures = []
    monkeypatch.setattr(report, "_save_png", lambda fig, path: figures.append(fig))
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    report.write_report(study, run_dir)
    ax = figures[0].axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert f"Llama-3.2-1B (#{llama['number']})" in texts and "Flash-1B" in texts and "Qwen3-0.6B" in texts
    vlines = sorted(ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == ":" and len(ln.get_xdata()))
    assert vlines == pytest.approx(sorted([marks["Flash-1B"]["latency"], marks["Qwen3-0.6B"]["latency"]]))
    html = (run_dir / "pareto.html").read_text()
    assert all(name in html for name in NAMES)


def test_measured_latency_skips_references_with_a_note():
    marks, notes = predict_references(object(), None, "measured:cpu")
    assert marks == [] and "latency=measured" in notes[0]
