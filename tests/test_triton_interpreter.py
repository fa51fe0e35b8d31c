"""The Triton fast paths, on CPU: fla's chunk_delta_rule, chunk_gated_delta_rule, chunk_gla and fused_recurrent_*
step kernels, and (when mamba-ssm is installed) mamba_chunk_scan_combined and selective_state_update, run under
Triton's interpreter and compared with our torch forms (kernels/*.py) in forward, gradients of every input and of
the initial state, and two-part prefill, on awkward lengths (T = 1, 3, 63, 65 around the 64-token chunk).

Slow (the interpreter runs each Triton program in numpy: ~10 min on a 2-core machine), so outside the default
run:

    .venv/bin/python -m pytest -m interpreter tests/test_triton_interpreter.py

The kernels run in one subprocess (tests/triton_interp.py) because TRITON_INTERPRET must be set before triton is
imported, and the rest of the suite must not see it. mamba-ssm is not a default dependency; its cases skip with
the reason unless it is installed (MAMBA_SKIP_CUDA_BUILD=TRUE pip install --no-build-isolation --no-deps mamba-ssm).
bf16 is not checked here: the interpreter stores it as uint16 and its bf16 dots are wrong (the GPU tests cover it).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import triton_interp

pytestmark = pytest.mark.interpreter

HELPER = Path(triton_interp.__file__)


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    pytest.importorskip("triton")
    pytest.importorskip("fla")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(HELPER)], capture_output=True, text=True, env=env, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"interpreter run failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1].removeprefix("RESULTS "))


@pytest.mark.parametrize("case", triton_interp.case_names())
def test_kernel_matches_torch_form(results: dict[str, dict], case: str) -> None:
    got = results[case]
    if "skip" in got:
        pytest.skip(got["skip"])
    assert "error" not in got, got.get("error")
    worst = max(got, key=lambda k: got[k] if math.isfinite(got[k]) else math.inf)
    assert triton_interp.within(got, case, triton_interp.TOLERANCE), \
        f"{case}: {worst} off by {got[worst]:.2e} (tolerance {triton_interp.TOLERANCE}); all: {got}"


def test_interpreter_setting_stays_in_the_subprocess() -> None:
    assert os.environ.get("TRITON_INTERPRET") != "1"
