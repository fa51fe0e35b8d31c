"""The study suite's entry point, run as a user runs it (a subprocess: tests never import experiments/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_list_names_every_study_folder():
    out = _run("list")
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    folders = {p.parent.name for p in ROOT.glob("experiments/*/settings.yaml")}
    assert listed == folders and {"proxy_fidelity", "searcher_benchmark", "kernel_bench"} <= listed


def test_check_quick_passes_and_bad_input_is_one_line():
    out = _run("check", "--quick")
    assert out.returncode == 0, out.stdout + out.stderr
    bad = _run("run", "no_such_study")
    assert bad.returncode == 2 and bad.stderr.startswith("error: no study 'no_such_study'")
    assert len(bad.stderr.strip().splitlines()) == 1
