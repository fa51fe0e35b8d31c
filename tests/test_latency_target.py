"""Latency-target mode as the paper has it: every trained candidate (random seeding, mutations, fallbacks, seed
genomes) at the widest width that meets the target; infeasible candidates never trained; predictions memoised;
`latency=measured` refused with a target; baselines constrained through Optuna's constraints_func."""

import collections
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from flashsearch.cli import main
from flashsearch.config import load_config
from flashsearch.builders import build_space
from flashsearch.proxies.base import Workload
from flashsearch.proxies.latency.roofline import RooflinePredictor
from flashsearch.search import attrs
from flashsearch.search.aging import AgingEvolutionSampler
from flashsearch.space import StagedSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]
SPACE = StagedSpace(max_operators=1000)
TARGET = 25.0


def toy_latency(g):
    return g.n_layers * g.d_model / 1000.0


def widest_meeting(space, params, latency, target):
    """Reference: the widest width at which these params meet the target (None if none)."""
    for w in sorted(space.widths, reverse=True):
        p = space.repair(space.with_width(params, w))
        if latency(space.decode(p)) <= target:
            return w
    return None


def run_sampler(latency_fn, n=40, population=6):
    sampler = AgingEvolutionSampler(SPACE, population=population, sample_size=3, seed=7, target_latency=TARGET,
                                    latency_fn=latency_fn)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for _ in range(n):
        trial = study.ask(fixed_distributions=SPACE.distributions())
        genome = SPACE.decode(SPACE.repair(trial.params))
        trial.set_user_attr("genome_id", genome.id)
        study.tell(trial, [3.0 - 0.0002 * genome.d_model - 0.01 * genome.n_layers, toy_latency(genome)])
    return study


def test_every_candidate_random_ones_included_is_at_the_widest_width_meeting_the_target():
    study = run_sampler(toy_latency)
    origins = collections.Counter()
    for t in study.get_trials():
        origins[t.system_attrs[attrs.AGING_ORIGIN]] += 1
        assert t.values[1] <= TARGET, t.params  # no infeasible candidate is ever trained
        assert t.params["d_model"] == widest_meeting(SPACE, t.params, toy_latency, TARGET), t.params
    assert origins["random"] >= 6 and origins["mutation"] >= 20


def test_latency_predictions_are_memoised_by_genome_id():
    calls = collections.Counter()

    def counting(g):
        calls[g.id] += 1
        return toy_latency(g)

    run_sampler(counting)
    assert calls and max(calls.values()) == 1


# ---- through `flashsearch run` ----------------------------------------------------------------------------------
def write_config(tmp_path: Path, **search) -> Path:
    cfg = {
        "name": "target", "seed": 0, "out_dir": str(tmp_path / "run"),
        "space": {"kind": "layerwise", "operators": ["attention", "mamba2", "ffn"], "widths": [1024, 1536, 2048],
                  "min_layers": 2, "max_layers": 8},
        "latency": {"_target_": "roofline"},
        "workload": {"device": "h100", "decode_tokens": 2048},
        "quality": {"_target_": "fs_test_plugins.SleepyQuality", "sleep_s": 0.0},
        "search": {"trials": 4, "population": 2, "sample_size": 1, "workers": 1, **search},
        "ray": {"address": "local"}, "export_top": 1,
    }
    path = tmp_path / "target.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def load(out_dir):
    return optuna.load_study(study_name="target",
                             storage=JournalStorage(JournalFileBackend(str(out_dir / "study.journal"))))


def test_seeds_are_trained_at_the_widest_width_meeting_the_target(tmp_path, plugins_on_path):
    config = write_config(tmp_path)
    space = build_space(load_config(config))
    narrow = {"n_layers": 4, "d_model": 1024, **{f"l{i}": op for i, op in enumerate(["mamba2", "ffn", "attention", "ffn"])}}
    narrow = space.repair({k: v for k, v in narrow.items() if k in space.distributions()} | {
        k: "ffn" for k in space.distributions() if k not in narrow})
    predictor, workload = RooflinePredictor(device="h100"), Workload(device="h100", decode_tokens=2048)
    latency = lambda g: predictor.predict(g, workload)
    mid = space.decode(space.repair(space.with_width(narrow, 1536)))
    wide = space.decode(space.repair(space.with_width(narrow, 2048)))
    target = (latency(mid) + latency(wide)) / 2  # 1536 meets it, 2048 does not
    seed_file = tmp_path / "seed.yaml"
    seed_file.write_text(yaml.safe_dump(space.decode(narrow).to_dict()))
    config = write_config(tmp_path, target_latency=float(target), seeds=[str(seed_file)], trials=2)
    assert main(["run", str(config)]) == 0
    trials = load(tmp_path / "run").get_trials()
    seeded = [t for t in trials if "seed" in t.user_attrs]
    assert len(seeded) == 1 and seeded[0].params["d_model"] == 1536
    assert seeded[0].user_attrs["genome_id"] == mid.id


def test_measured_latency_with_a_target_is_one_clear_error_and_writes_nothing(tmp_path, plugins_on_path, capsys):
    config = write_config(tmp_path, target_latency=10.0)
    assert main(["run", str(config), "latency=measured"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "latency=measured" in err and "roofline" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_baselines_get_the_target_as_a_constraint(tmp_path, plugins_on_path, sampler):
    config = write_config(tmp_path, target_latency=2.0, sampler=sampler, trials=3)
    from flashsearch.search.latency_target import LatencyTarget
    from flashsearch.search.samplers import build_sampler

    cfg = load_config(config)
    built = build_sampler(cfg, build_space(cfg), LatencyTarget(build_space(cfg), lambda g: 1.0, 2.0))
    assert type(built).__name__ == {"tpe": "TPESampler", "nsga2": "NSGAIISampler", "random": "RandomSampler"}[sampler]
    assert main(["run", str(config)]) == 0
    done = load(tmp_path / "run").get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    for t in done:
        assert t.constraints == pytest.approx({"latency": t.values[1] - 2.0})
    # NSGA-II and TPE read these to prefer feasible trials (Optuna 5: constraints set on the trial)
