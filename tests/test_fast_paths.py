"""No silent fallback, dtype guards and the fused decode steps, checked on CPU.

- every operator records the path each call ran (`Operator.last_path`), and a trial reports them per operator
  (`fast_path` in its metrics); a fast-path package that does not import on a CUDA machine is a WARNING, once,
  with the import error (simulated here: CUDA claimed, the import made to fail);
- a fused kernel that refuses a dtype is not called: the torch form runs and the recorded path says why;
- the decode step updates its states in place, with the numbers of the step it replaces.
"""

from __future__ import annotations

import builtins
import logging
from typing import Any

import pytest
import torch

from factories import every_operator_genome, tiny_genome
from flashsearch.kernels import _common, build_operator
from flashsearch.kernels.base import paths_run
from flashsearch.model import HybridLM

MIXERS = ("attention", "swa", "mamba2", "deltanet", "gated_deltanet", "gla")
RECURRENT = ("mamba2", "deltanet", "gated_deltanet", "gla")


@pytest.fixture
def fresh_kernel_lookup(monkeypatch: pytest.MonkeyPatch) -> Any:
    """cuda_kernel with an empty cache and no package noted yet (and both restored afterwards)."""
    _common.cuda_kernel.cache_clear()
    monkeypatch.setattr(_common, "_NOTED_MISSING", set())
    yield
    _common.cuda_kernel.cache_clear()


def fail_imports(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """CUDA claimed available; importing any of `packages` raises ImportError (as a broken install would)."""
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in packages:
            raise ImportError(f"simulated: {name} is broken")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(builtins, "__import__", fake_import)


# ---- 1. no silent fallback ----------------------------------------------------------------------------------
def test_a_failed_fast_path_import_warns_once_with_the_error(fresh_kernel_lookup: Any, caplog: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fail_imports(monkeypatch, "fla", "mamba_ssm", "causal_conv1d")
    with caplog.at_level(logging.WARNING, logger=_common.__name__):
        ops = [build_operator(name, every_operator_genome()) for name in RECURRENT for _ in range(2)]
    assert all(not getattr(op, "use_fast_path", True) for op in ops if op.name != "mamba2")
    assert all(op.fast_path is None for op in ops if op.name == "mamba2")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # One per package (fla's three kernels and two builds of each operator included), each naming the error.
    assert sorted(r.getMessage().split(" does not import")[0].split()[-1] for r in warnings) == [
        "causal_conv1d", "fla", "mamba_ssm"]
    assert all("ImportError: simulated" in r.getMessage() for r in warnings)


def test_without_cuda_a_missing_package_is_silent(fresh_kernel_lookup: Any, caplog: Any) -> None:
    with caplog.at_level(logging.DEBUG, logger=_common.__name__):
        assert _common.cuda_kernel("flashsearch_no_such_package.ops", "kernel") is None
    assert not caplog.records


@pytest.mark.parametrize("cpu_kernels", [False, True])
def test_every_operator_records_its_path(cpu_kernels: bool) -> None:
    torch.manual_seed(0)
    model = HybridLM(every_operator_genome())
    if cpu_kernels:
        from flashsearch.model.fast import cpu_kernels_
        if cpu_kernels_(model) == 0:
            pytest.skip("the compiled CPU kernels cannot be built here")
    assert paths_run(model) == {}                               # nothing ran yet
    ids = torch.randint(0, 50, (2, 20))
    model(ids)
    torch_forms = {"attention": "sdpa", "swa": "sdpa", "mamba2": "torch.chunked+torch.conv",
                   "deltanet": "torch.chunked", "gated_deltanet": "torch.chunked", "gla": "torch.chunked",
                   "ffn": "torch"}
    if cpu_kernels:
        torch_forms.update({"attention": "cpu_kernel.attention", "swa": "cpu_kernel.attention",
                            "mamba2": "cpu_kernel.ssd+torch.conv", "deltanet": "cpu_kernel.delta_rule",
                            "gated_deltanet": "cpu_kernel.delta_rule"})
    assert paths_run(model) == torch_forms
    with torch.no_grad():
        state = model.init_state(2, 4)
        model.step(ids[:, :1], state)
    assert paths_run(model) == {**{op: "torch.recurrent" for op in RECURRENT}, "attention": "sdpa", "swa": "sdpa",
                                "ffn": "torch"}


def test_a_trial_reports_the_paths_its_operators_ran(fresh_kernel_lookup: Any, caplog: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from flashsearch.proxies.base import Budget
    from flashsearch.proxies.quality.short_train import ShortTrain

    genome = tiny_genome(("deltanet", "ffn", "mamba2", "ffn", "attention", "ffn"))
    fail_imports(monkeypatch, "fla", "mamba_ssm", "causal_conv1d")
    proxy = ShortTrain(seq_len=16, batch_size=2, eval_batches=1, log_every=1, fast=False)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger=_common.__name__):
        result = proxy.evaluate(genome, Budget(tokens=2 * 16 * 2))
    assert result.extra["fast_path"] == {"attention": "sdpa", "deltanet": "torch.chunked", "ffn": "torch",
                                         "mamba2": "torch.chunked+torch.conv"}
    assert any("fla does not import" in r.getMessage() for r in caplog.records)


# ---- 2. dtype guards -------------------------------------------------------------------------------------------
# What each fused chunk kernel is handed and the dtype it refuses in these tests (fp64: none of them takes it; fp32:
# fla's chunk_delta_rule).
CHUNK_KERNELS = {"deltanet": (("fla.ops.delta_rule", "chunk_delta_rule"), torch.float32),
                 "gated_deltanet": (("fla.ops.gated_delta_rule", "chunk_gated_delta_rule"), torch.float64),
                 "gla": (("fla.ops.gla", "chunk_gla"), torch.float64),
                 "mamba2": (("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"), torch.float64)}


@pytest.mark.parametrize("name", sorted(CHUNK_KERNELS))
def test_a_refused_dtype_takes_the_torch_form_and_says_so(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (module, fn), refused = CHUNK_KERNELS[name]
    calls: list[torch.dtype] = []

    def kernel(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0].dtype)
        raise AssertionError(f"{fn} called with {args[0].dtype}")

    monkeypatch.setattr(_common, "on_cuda", lambda x: True)
    for mod in ("deltanet", "gated_deltanet", "gla", "mamba2"):
        monkeypatch.setattr(f"flashsearch.kernels.{mod}.on_cuda", lambda x: True)
    monkeypatch.setattr(_common, "cuda_kernel", lambda m, f: kernel if (m, f) == (module, fn) else None)
    for mod in ("deltanet", "mamba2"):
        monkeypatch.setattr(f"flashsearch.kernels.{mod}.cuda_kernel", _common.cuda_kernel)
    monkeypatch.setattr("flashsearch.kernels.gated_deltanet.fla_kernel", _common.cuda_kernel)
    monkeypatch.setattr("flashsearch.kernels.gla.fla_kernel", _common.cuda_kernel)
    torch.manual_seed(0)
    op = build_operator(name, every_operator_genome()).to(refused)
    assert op.use_fast_path if name != "mamba2" else op.fast_path == "mamba_ssm"
    y = op(torch.randn(2, 20, op.q_proj.in_features if name != "mamba2" else op.in_proj.in_features,
                       dtype=refused))
    assert torch.isfinite(y).all() and not calls
    dtype = str(refused).removeprefix("torch.")
    assert op.last_path.startswith(f"torch.chunked[fused kernel refuses {dtype}]")
