"""A token mixer from a module outside flashsearch (tests/plugins/fs_toy_ops.py) joins the one operator registry
by being imported: genomes, summaries, options, the search CLI, workers and the HF export all know it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pandas as pd
import pytest
import torch

from factories import HYBRID_YAML, PLUGINS_DIR, TINY_RUN, tiny_genome
from flashsearch import kernels as K
from flashsearch import operators
from flashsearch.cli import main
from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome

sys.path.insert(0, str(PLUGINS_DIR))  # an importable module that is not part of flashsearch
import fs_toy_ops  # noqa: E402  (registers 'cummean')

TOY_LAYERS = ("cummean", "ffn", "deltanet", "ffn")


def toy_genome(**options) -> Genome:
    """The toy operator in a tiny hybrid, with `options` for it."""
    return tiny_genome(TOY_LAYERS, op_options={"cummean": options})


# ---- the registry -----------------------------------------------------------------------------------------------
def test_import_registers_name_letter_role_and_aliases():
    spec = operators.spec("cummean")
    assert spec.cls is fs_toy_ops.CumMean and spec.letter == "CM" and spec.is_mixer
    assert "cummean" in operators.mixers() and operators.letters()["cummean"] == "CM"
    for spelling in ("cummean", "CM", "running_mean", " RUNNING_MEAN "):
        assert operators.canonical(spelling) == "cummean"
    assert K.operator_class("cm") is fs_toy_ops.CumMean


def test_summary_uses_the_toy_letter_and_parses_back():
    g = toy_genome()
    assert g.summary() == "CM F D F"
    assert g.n_mixers == 2
    back = tiny_genome(g.summary().split(), op_options={"cummean": {}})
    assert back == g and back.id == g.id


def test_options_are_typed_with_defaults():
    assert K.build_operator("cummean", toy_genome()).opts == fs_toy_ops.CumMean.Options(scale=1.0, bias=False)
    op = K.build_operator("cummean", toy_genome(scale=2, bias=True))
    assert op.opts.scale == 2.0 and isinstance(op.opts.scale, float) and op.v_proj.bias is not None


@pytest.mark.parametrize("opts, option_name, why", [
    ({"scal": 2.0}, "scal", "does not support"),                 # unknown key
    ({"scale": "2"}, "scale", "must be a finite number > 0"),    # wrong type
    ({"scale": 0.0}, "scale", "must be a finite number > 0"),    # out of bounds
    ({"bias": 1}, "bias", "must be true or false"),             # 1 is not a bool
])
def test_bad_options_are_one_line_naming_operator_option_and_where(opts, option_name, why):
    for build in (lambda: toy_genome(**opts),                                   # the genome checks them
                  lambda: K.build_operator("cummean", toy_genome().with_options("cummean", **opts)),
                  lambda: operators.parse_options("running_mean", opts)):
        with pytest.raises(FlashsearchError) as err:
            build()
        msg = str(err.value)
        assert "'cummean'" in msg and option_name in msg and "op_options.cummean" in msg and why in msg
        assert "\n" not in msg


def test_bad_builtin_option_type_names_where():
    with pytest.raises(FlashsearchError, match=r"'swa' option window='64' \(in op_options.swa\) must be an integer"):
        toy_genome().with_options("swa", window="64")


@pytest.mark.parametrize("body, needle", [
    (dict(name="cummean2", letter="CM"), "'cm' .*already taken by operator 'cummean'"),
    (dict(name="deltanet", letter="Q"), "'deltanet' is already registered by flashsearch.kernels.deltanet.DeltaNet"),
    (dict(name="toy2", letter="Q", aliases=("gdn",)), "'gdn'"),
    (dict(name="Toy", letter="Q"), "name='Toy'"),
    (dict(name="toy3", letter="q"), "letter='q'"),
    (dict(name="toy4", letter="Q", role="channel"), "role='channel'"),
])
def test_bad_declarations_are_clear_errors(body, needle):
    before = operators.names()
    with pytest.raises(FlashsearchError, match=needle):
        type("Bad", (K.Operator,), dict(body))
    assert operators.names() == before                          # nothing half-registered


def test_options_must_be_a_frozen_typed_dataclass():
    @dataclass
    class Mutable:
        k: int = 1

    @dataclass(frozen=True)
    class Listy:
        k: tuple = (1,)

    with pytest.raises(FlashsearchError, match="frozen dataclass"):
        type("Bad", (K.Operator,), {"name": "toy5", "letter": "Q", "Options": Mutable})
    with pytest.raises(FlashsearchError, match="Options.k has type <class 'tuple'>, which is not supported"):
        type("Bad", (K.Operator,), {"name": "toy6", "letter": "Q", "Options": Listy})
    assert "toy5" not in operators.names() and "toy6" not in operators.names()


# ---- the toy operator is a real operator ------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 3, 65])
def test_toy_forward_equals_step_by_step(T):
    torch.manual_seed(0)
    op = K.build_operator("cummean", toy_genome(scale=0.5, bias=True)).double().eval()
    x = torch.randn(2, T, 64, dtype=torch.float64)
    state = op.init_state(2, T, dtype=torch.float64)
    steps = []
    for t in range(T):
        y, state = op.step(x[:, t:t + 1], state)
        steps.append(y)
    torch.testing.assert_close(op(x), torch.cat(steps, dim=1), rtol=1e-12, atol=1e-12)
    # and it is causal: the first output ignores later tokens
    torch.testing.assert_close(op(x[:, :1]), op(x)[:, :1])


def test_toy_decode_cost_feeds_the_roofline():
    from flashsearch.proxies.base import Workload
    from flashsearch.proxies.latency.roofline import RooflinePredictor

    g = toy_genome()
    assert K.decode_cost(g, "cummean", 10).weight_elems == 2 * 64 * 64
    assert RooflinePredictor(device="h100").predict(g, Workload(device="h100", decode_tokens=64)) > 0


# ---- end to end: config `imports:` -> controller, workers, summaries, export ------------------------------------
TOY_RUN = [*TINY_RUN, "imports=[fs_toy_ops]", "space.operators=[cummean,deltanet]", "space.widths=[1024,1280]",
           "search.seeds=[]", "space.op_options.cummean.scale=0.5"]


def test_tiny_search_with_the_toy_operator(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(PLUGINS_DIR))
    out = tmp_path / "run"
    code = main(["run", HYBRID_YAML, *TOY_RUN, f"out_dir={out}"])
    assert code == 0, capsys.readouterr().err
    trials = pd.read_parquet(out / "trials.parquet")
    done = trials[trials["state"] == "COMPLETE"]
    assert len(done) == 5 and (done["quality"] > 0).all()
    assert done["summary"].str.contains(r"\bCM\b").any()
    assert all(set(s.split()) <= {"CM", "D", "F"} for s in done["summary"])
    exported = sorted((out / "export").glob("*/config.json"))
    assert exported
    from flashsearch.export import genome_from_hf_config

    by_id = {r["genome_id"]: Genome.from_json(r["genome_json"]) for r in done.to_dict("records")}
    for path in exported:
        cfg = json.loads(path.read_text())
        genome = genome_from_hf_config(cfg)                      # the HF config round-trips the toy operator
        assert genome == by_id[genome.id]
        assert genome.options("cummean") == {"scale": 0.5}


def test_a_fresh_worker_process_imports_the_run_modules(tmp_path):
    """What a Ray worker does: unpickle the evaluator and evaluate a genome it has never seen the operator of."""
    script = f"""
import sys
from flashsearch.config import load_config
from flashsearch.evaluate import CandidateEvaluator
from flashsearch import operators
cfg = load_config({HYBRID_YAML!r}, {TINY_RUN + ['imports=[fs_toy_ops]', 'budget.tokens=512']!r})
assert 'fs_toy_ops' not in sys.modules
genome = ('{{"d_model":64,"ffn_ratio":3.0,"head_dim":32,"layer_types":["cummean","ffn"],"n_heads":2,'
          '"n_kv_heads":1,"op_options":{{"cummean":{{"scale":2.0}}}},"vocab_size":256}}')
result = CandidateEvaluator(cfg)(genome)
assert 'fs_toy_ops' in sys.modules and result['loss'] > 0, result
print('ok', result['loss'])
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS_DIR), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_unimportable_module_is_one_line_exit_2_and_no_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", HYBRID_YAML, *TINY_RUN, "imports=[no_such_flashsearch_plugin]", f"out_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot import module 'no_such_flashsearch_plugin'" in err and "imports" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_operator_unknown_without_its_import_says_how_to_fix(tmp_path, capsys):
    code = main(["run", HYBRID_YAML, *TINY_RUN, "space.operators=[not_registered_op]", f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown operator 'not_registered_op'" in err and "imports:" in err


def test_describe_with_import_flag(tmp_path, capsys):
    genome = tmp_path / "toy.yaml"
    genome.write_text("layer_types: [CM, F, D, F]\nd_model: 512\nn_heads: 4\nhead_dim: 128\n")
    assert main(["--import", "fs_toy_ops", "describe", str(genome)]) == 0
    assert "CM F D F" in capsys.readouterr().out
    assert main(["--import", "no_such_flashsearch_plugin", "describe", str(genome)]) == 2
    err = capsys.readouterr().err
    assert "--import: cannot import module 'no_such_flashsearch_plugin'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_real_ray_workers_import_the_run_modules(tmp_path):
    """The same tiny search on a real local Ray (fresh worker processes): `flashsearch run` as a user runs it."""
    out = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(PLUGINS_DIR), os.environ.get("PYTHONPATH", "")])}
    args = [a for a in TOY_RUN if not a.startswith(("ray.address", "search.trials", "search.workers", "space.ope"))]
    proc = subprocess.run([sys.executable, "-m", "flashsearch.cli", "run", HYBRID_YAML, *args, "search.trials=2",
                           "search.workers=2", "space.operators=[cummean]", f"out_dir={out}"], env=env, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = pd.read_parquet(out / "trials.parquet").query("state == 'COMPLETE'")
    assert len(done) == 2 and done["summary"].str.contains(r"\bCM\b").all()
    # report/export in a fresh process re-import the run's `imports` from its config.yaml
    (out / "trials.parquet").unlink()
    for cmd in (["report", str(out)], ["export", str(out), "--top", "1", "--out", str(tmp_path / "exp")]):
        proc = subprocess.run([sys.executable, "-m", "flashsearch.cli", *cmd], env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    redone = pd.read_parquet(out / "trials.parquet").query("state == 'COMPLETE'")
    assert redone["summary"].str.contains(r"\bCM\b").all()        # derived columns need the operator known
    assert "cummean" in next((tmp_path / "exp").glob("*/config.json")).read_text()
