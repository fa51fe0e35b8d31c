"""Samplers follow the one plug-in rule: a short name, or `_target_` naming any Optuna sampler class."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest

from factories import PLUGINS_DIR as PLUGINS
from flashsearch.config import RunConfig, SearchConfig
from flashsearch.errors import FlashsearchError
from flashsearch.search.aging import AgingEvolutionSampler
from flashsearch.search.rungs import ScreeningOnly
from flashsearch.search.samplers import build_sampler
from flashsearch.space import StagedSpace

SPACE = StagedSpace(widths=(256, 512), max_blocks_per_stage=2, max_operators=12)


def cfg(sampler, **search) -> RunConfig:
    return RunConfig(search=SearchConfig(sampler=sampler, **search))


@pytest.mark.parametrize("name,cls", [("aging", AgingEvolutionSampler), ("random", optuna.samplers.RandomSampler),
                                      ("nsga2", optuna.samplers.NSGAIISampler), ("tpe", optuna.samplers.TPESampler)])
def test_short_names_build_the_shipped_samplers(name, cls):
    assert type(build_sampler(cfg(name), SPACE)) is cls
    assert type(build_sampler(cfg({"_target_": name}), SPACE)) is cls


def test_config_settings_reach_shipped_samplers_and_options_override_them():
    aging = build_sampler(cfg("aging", population=6, sample_size=3, children_per_ask=2), SPACE)
    assert (aging.population, aging.sample_size, aging.children_per_ask) == (6, 3, 2)
    nsga = build_sampler(cfg({"_target_": "nsga2", "population_size": 10}, population=6), SPACE)
    assert nsga._population_size == 10
    tpe = build_sampler(cfg({"_target_": "tpe", "n_ei_candidates": 7}), SPACE)
    assert tpe._n_ei_candidates == 7


def test_baselines_are_wrapped_under_multi_fidelity_but_aging_is_not():
    multi = dict(fidelity="multi", trials=9)
    assert isinstance(build_sampler(cfg("random", **multi), SPACE), ScreeningOnly)
    assert isinstance(build_sampler(cfg("aging", **multi), SPACE), AgingEvolutionSampler)


@pytest.mark.parametrize("spec,needle", [
    ("cmaes", "neither a short name (aging, random, nsga2, tpe) nor a dotted path"),
    ({"_target_": "no_such_module.Sampler"}, "cannot import module 'no_such_module'"),
    ({"_target_": "tpe", "bogus": 1}, "does not take option(s) bogus"),
    ({"_target_": "argparse.Namespace"}, "Namespace is not an Optuna sampler"),
])
def test_bad_sampler_specs_are_one_line(spec, needle):
    with pytest.raises(FlashsearchError) as e:
        build_sampler(cfg(spec), SPACE)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_aging_refuses_a_tournament_larger_than_its_population():
    with pytest.raises(FlashsearchError, match=r"search.sample_size=50 must be in \[1, search.population=12\]"):
        build_sampler(cfg("aging", sample_size=50), SPACE)
    build_sampler(cfg("random", sample_size=50), SPACE)  # only aging evolution has a tournament


def test_a_user_sampler_from_outside_the_package_drives_flashsearch_run(tmp_path):
    """The whole path a user takes: their module on PYTHONPATH, its class named by `_target_` in their YAML,
    `flashsearch run` in a fresh process."""
    config = tmp_path / "mine.yaml"
    config.write_text(f"""
name: mine
out_dir: {tmp_path / 'run'}
space: {{kind: staged, widths: [256, 512], max_blocks_per_stage: 2, max_operators: 12, vocab_size: 1024}}
quality: {{_target_: fs_test_plugins.SleepyQuality, sleep_s: 0.0}}
search:
  sampler: {{_target_: my_sampler.WidestRandomSampler, tag: from-yaml}}
  trials: 4
  workers: 1
ray: {{address: local}}
export_top: 1
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "flashsearch.cli", "run", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.load_study(study_name="mine", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal"))))
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) >= 4
    assert all(t.system_attrs.get("user_sampler") == "from-yaml" for t in trials)
    assert all(t.params["d_model"] == 512 for t in trials)  # the user's rule, not ours
    assert (pd.read_parquet(tmp_path / "run" / "trials.parquet")["state"] == "COMPLETE").sum() >= 4
