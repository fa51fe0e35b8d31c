"""The command line as users meet it: bad input is one line + exit 2 + nothing written; a tiny run end to end."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from factories import FLASH_1B_YAML, HYBRID_YAML, TINY_RUN
from flashsearch.cli import main


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args,needle", [
    (["run", "does/not/exist.yaml"], "config file not found"),
    (["run", HYBRID_YAML, "search.trialz=3"], "unknown key 'search.trialz'"),
    (["run", HYBRID_YAML, "space.operators=[attention,lstm]"], "unknown operator 'lstm'"),
    (["run", HYBRID_YAML, "search.target_latency=0.001"], "cannot be met"),
    (["run", HYBRID_YAML, "budget.tokens=0"], "budget.tokens must be positive"),
    (["run", HYBRID_YAML, "search.trials=-3"], "search.trials must be positive"),
    (["run", HYBRID_YAML, "search.workers=0"], "search.workers must be positive"),
    (["run", HYBRID_YAML, "latency.device=tpu9"], "tpu9"),
    (["run", HYBRID_YAML, "latency._target_=nowhere.Predictor"], "cannot import module 'nowhere'"),
    (["run", HYBRID_YAML, "quality.learning_rate=1"], "does not take option(s) learning_rate"),
    (["run", HYBRID_YAML, "space.op_options.swa.windw=3"], "does not support option(s) windw"),
    (["run", HYBRID_YAML, "data.path=/no/such/corpus.txt"], "data.path"),
    (["run", HYBRID_YAML, "data.corpus=shakespeare"], "'shakespeare'"),
    (["run", HYBRID_YAML, f"data.path={HYBRID_YAML}", "data.corpus=pydoc"], "not both"),
    (["describe", "nope.yaml"], "genome file not found"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(args, needle, capsys, tmp_path):
    out_dir = tmp_path / "run"
    if args[0] == "run":
        args = args + [f"out_dir={out_dir}"]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_yaml_syntax_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsearch:\n  trials: [1,\n")
    code, _, err = run_cli(["run", str(bad)], capsys)
    assert code == 2 and "YAML syntax error" in err and "bad.yaml:" in err


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "flashsearch.cli", "run", HYBRID_YAML, "search.trialz=1",
                           f"out_dir={tmp_path / 'x'}"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_describe_flash_1b_json(capsys):
    code, out, _ = run_cli(["describe", str(FLASH_1B_YAML), "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert abs(info["params"] - 0.96e9) / 0.96e9 < 0.02
    assert info["operator_counts"] == {"deltanet": 4, "ffn": 12, "mamba2": 6, "attention": 2}
    assert info["latency"]["seconds"] > 0 and info["latency"]["decode_tokens"] == 8192


def test_tiny_run_end_to_end_and_resume(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(["run", HYBRID_YAML, *TINY_RUN, f"out_dir={out_dir}"], capsys)
    assert code == 0, err
    for name in ("study.journal", "trials.parquet", "pareto.png", "pareto.html", "config.yaml"):
        assert (out_dir / name).is_file(), name
    df = pd.read_parquet(out_dir / "trials.parquet")
    done = df[df["state"] == "COMPLETE"]
    assert len(done) == 5
    assert done["latency_source"].str.startswith("roofline").all()
    assert done["genome_id"].is_unique
    assert (done["quality"] > 0).all() and (done["latency"] > 0).all()
    exported = sorted((out_dir / "export").glob("*/config.json"))
    assert 1 <= len(exported) <= 2
    cfg = json.loads(exported[0].read_text())
    assert cfg["layer_types"] and cfg["hidden_size"] in (1024, 1280, 1536, 1792, 2048, 2304, 2560)
    assert "trials complete" in out and "pareto.png" in out

    # Same command, more trials: resumes the study instead of starting over.
    code, _, err = run_cli(["run", HYBRID_YAML, *TINY_RUN, "search.trials=6", f"out_dir={out_dir}"], capsys)
    assert code == 0, err
    df = pd.read_parquet(out_dir / "trials.parquet")
    assert (df["state"] == "COMPLETE").sum() == 6

    # A different space on the same out_dir is refused, not mixed in.
    code, _, err = run_cli(["run", HYBRID_YAML, *TINY_RUN, "space.max_operators=20", f"out_dir={out_dir}"], capsys)
    assert code == 2 and "different space" in err

    # report and export rebuild from the study alone
    (out_dir / "pareto.png").unlink()
    assert run_cli(["report", str(out_dir)], capsys)[0] == 0
    assert (out_dir / "pareto.png").is_file()
    code, out, _ = run_cli(["export", str(out_dir), "--top", "1", "--out", str(tmp_path / "exp")], capsys)
    assert code == 0 and len(list((tmp_path / "exp").glob("*/config.json"))) == 1


def test_unreachable_ray_cluster_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:9999")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    out_dir = tmp_path / "run"
    code, _, err = run_cli(["run", HYBRID_YAML, "ray.address=10.0.0.1:9999", f"out_dir={out_dir}"], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: cannot join the Ray cluster") and "Traceback" not in err
    assert not out_dir.exists()
