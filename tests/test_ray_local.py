"""A run without ray.address starts its own local Ray, whatever stale state an earlier Ray left behind.

After a local cluster is killed (kill -9), Ray's temp dir keeps a `ray_current_cluster` file naming it; a plain
ray.init() then tries to join that dead cluster. The run must not care. Ray's temp dir is a fresh one per test
(RAY_TMPDIR, short: Ray's socket paths must stay under the OS limit), so nothing here touches other users' Ray.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from factories import PLUGINS_DIR as PLUGINS

CONFIG = """
name: stale
out_dir: {out}
space: {{kind: staged, widths: [256, 512], max_blocks_per_stage: 2, max_operators: 12, vocab_size: 1024}}
quality: {{_target_: fs_test_plugins.SleepyQuality, sleep_s: 0.0}}
search: {{trials: 3, workers: 1}}
export_top: 1
"""


@pytest.fixture()
def ray_tmp():
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_a_stale_cluster_file_does_not_stop_a_local_run(tmp_path, ray_tmp):
    (ray_tmp / "ray_current_cluster").write_text("127.0.0.1:1\n")  # a cluster that is long gone
    config = tmp_path / "stale.yaml"
    config.write_text(CONFIG.format(out=tmp_path / "run"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "flashsearch.cli", "run", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    df = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert (df["state"] == "COMPLETE").sum() == 3
