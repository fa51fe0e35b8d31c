"""Run fla's (and mamba-ssm's) Triton kernels on CPU tensors under Triton's interpreter, for
tests/test_triton_interpreter.py.

`python tests/triton_interp.py` (run by the test in a subprocess, because TRITON_INTERPRET must be set before
triton is imported and must not leak into the rest of the suite) calls each kernel we use on awkward sizes and
prints one JSON object: case name -> max error against our torch form, scaled by the reference's largest value.
The test file holds the tolerances.

Three interpreter limits are worked around here and only here (`enable()`):
1. The autotuner benchmarks its configs through the active driver, and the interpreter has none: keep the first
   config (correctness does not depend on the config, only speed does).
2. Loop variables of a builtin `range()` are Python ints under the interpreter, so `i_t.to(tl.int64)`
   (fla/ops/common/chunk_delta_h.py) fails: rebind each one as a Triton scalar at the top of the loop body.
3. bf16 is stored as uint16 there, so bf16 dots are garbage: no bf16 case is run (fp16 and fp32 are exact).
mamba-ssm's package __init__ imports its CUDA extension, so its Triton submodules are imported under a bare
package module, and its wrappers' `torch.cuda.device(i)` / `get_device_properties` get CPU stand-ins
(`_mamba_ssm_without_cuda`).
"""

from __future__ import annotations

import ast
import json
import os
import sys
from typing import Callable

SIZES = (1, 3, 63, 65)                     # tokens: one, fewer than a chunk, one short of it, one past it
DTYPES = ("fp32", "fp16")                  # no bf16 under the interpreter (limit 3 above)
DEVICE_DTYPES = ("fp32", "fp16", "bf16")   # `--device cuda`: the real kernels, bf16 included
# Max error relative to the reference's largest value, against our torch form evaluated in fp64 on the same rounded
# inputs. Interpreter (measured on CPU): fp32 <= 1.2e-6, fp16 <= 1.0e-3 (fp16 outputs and gradients carry 2^-11).
TOLERANCE = {"fp32": 1e-5, "fp16": 3e-3}
# On a GPU fla's fp32 dots run in TF32 (10-bit mantissa, like fp16) and bf16 carries 2^-8: not yet measured on a
# device; experiments/gpu_check reports the errors next to these bounds.
DEVICE_TOLERANCE = {"fp32": 1e-2, "fp16": 5e-3, "bf16": 5e-2}


def enable() -> None:
    """Set TRITON_INTERPRET and patch the two interpreter limits. Call before triton / fla are imported."""
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set; run this in a fresh process")
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime import autotuner, interpreter

    prune = autotuner.Autotuner.prune_configs
    autotuner.Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]

    class LoopVarsAsTensors(interpreter.ASTTransformer):
        def visit_For(self, node: ast.For) -> ast.For:
            node = self.generic_visit(node)
            is_range = isinstance(node.iter, ast.Call) and isinstance(node.iter.func, ast.Name) \
                and node.iter.func.id == "range"
            if is_range and isinstance(node.target, ast.Name):
                name = node.target.id
                # `i = i` becomes `i = interpreter_semantic.to_tensor(i, False)` through visit_Assign.
                rebind = self.visit_Assign(ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())],
                                                      value=ast.Name(id=name, ctx=ast.Load())))
                node.body.insert(0, ast.copy_location(rebind, node))
            return node

    interpreter.FunctionRewriter.ast_transformer = LoopVarsAsTensors()


def within(results: dict[str, float], case: str, tolerance: dict[str, float]) -> bool:
    """Whether every error of `case` (named <kernel>-<dtype>[-T<n>]) is finite and within its dtype's bound."""
    bound = tolerance[case.split("-")[1]]
    return all(v == v and v <= bound for v in results.values())            # v == v: not NaN


# ---- inputs ---------------------------------------------------------------------------------------------------
def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _gen(seed: int):
    """A generator on the default device (cpu here, cuda under `--device cuda`)."""
    import torch

    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def _err(got, want) -> float:
    """max |got - want| / max |want| (want computed in fp32 or better)."""
    want = want.double()
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _grads(loss_of: Callable, tensors: list):
    import torch

    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    loss = loss_of(*leaves)
    return torch.autograd.grad(loss, leaves)


# ---- the cases ------------------------------------------------------------------------------------------------
def _delta_rule_inputs(t: int, dtype, gated: bool):
    import torch
    import torch.nn.functional as F

    g = _gen(1000 + t)
    b, h, dk, dv = 2, 3, 32, 48
    q = torch.randn(b, t, h, dk, generator=g)
    k = F.normalize(torch.randn(b, t, h, dk, generator=g), dim=-1)
    v = torch.randn(b, t, h, dv, generator=g)
    beta = torch.rand(b, t, h, generator=g)
    s0 = 0.1 * torch.randn(b, h, dk, dv, generator=g)
    w = torch.randn(b, t, h, dv, generator=g)                        # loss weights: sum(o * w) + sum(S * ws)
    ws = torch.randn(b, h, dk, dv, generator=g)
    ins = [q, k, v, beta]
    if gated:
        ins.append(-0.5 * torch.rand(b, t, h, generator=g))          # log-decay g <= 0
    return [x.to(dtype) for x in ins], s0, w, ws


def check_delta_rule(t: int, dtype_name: str, gated: bool) -> dict[str, float]:
    """fla chunk_(gated_)delta_rule against our torch form: output, final state, gradients of all inputs
    (and of the initial state); then the two-part prefill (state carried across a split)."""
    if gated:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_fn

        from flashsearch.kernels.gated_deltanet import gated_delta_rule_chunked as ours_fn

        def fla(q, k, v, beta, g, s0):
            return fla_fn(q, k, v, g, beta, initial_state=s0, output_final_state=True)

        def ours(q, k, v, beta, g, s0):
            return ours_fn(q, k, v, g, beta, chunk_size=64, initial_state=s0)
    else:
        from fla.ops.delta_rule import chunk_delta_rule as fla_fn

        from flashsearch.kernels.deltanet import delta_rule_chunked as ours_fn

        def fla(q, k, v, beta, s0):
            return fla_fn(q, k, v, beta, initial_state=s0, output_final_state=True)

        def ours(q, k, v, beta, s0):
            return ours_fn(q, k, v, beta, chunk_size=64, initial_state=s0)
    return _compare(fla, ours, *_delta_rule_inputs(t, _dtype(dtype_name), gated), t=t)


def check_gla(t: int, dtype_name: str) -> dict[str, float]:
    import torch

    from fla.ops.gla import chunk_gla

    from flashsearch.kernels.gla import gla_chunked

    g = _gen(2000 + t)
    b, h, dk, dv = 2, 3, 32, 48
    dtype = _dtype(dtype_name)
    q, k = torch.randn(b, t, h, dk, generator=g), torch.randn(b, t, h, dk, generator=g)
    v = torch.randn(b, t, h, dv, generator=g)
    gk = torch.nn.functional.logsigmoid(torch.randn(b, t, h, dk, generator=g)) / 16   # fla GLA's gate scale
    s0 = 0.1 * torch.randn(b, h, dk, dv, generator=g)
    w, ws = torch.randn(b, t, h, dv, generator=g), torch.randn(b, h, dk, dv, generator=g)

    def fla(q, k, v, gk, s0):
        return chunk_gla(q, k, v, gk, initial_state=s0, output_final_state=True)

    def ours(q, k, v, gk, s0):
        return gla_chunked(q, k, v, gk, chunk_size=64, initial_state=s0)
    return _compare(fla, ours, [x.to(dtype) for x in (q, k, v, gk)], s0, w, ws, t=t)


def _compare(fla: Callable, ours: Callable, ins: list, s0, w, ws, t: int) -> dict[str, float]:
    """Forward (o, final state) and backward errors of `fla` against `ours` evaluated in fp64 on the same (rounded)
    inputs; fla keeps states in fp32 whatever the inputs, so s0 goes in as fp32."""
    import torch

    out: dict[str, float] = {}
    ref_ins = [x.double() for x in ins]
    o, s = fla(*ins, s0)
    o_ref, s_ref = ours(*ref_ins, s0.double())
    out["o"], out["state"] = _err(o, o_ref), _err(s, s_ref)

    def loss(fn, cast):
        return lambda *xs: (fn(*xs[:-1], xs[-1])[0].to(cast) * w.to(cast)).sum() \
            + (fn(*xs[:-1], xs[-1])[1].to(cast) * ws.to(cast)).sum()

    got = _grads(loss(fla, torch.float32), [*ins, s0])
    want = _grads(loss(ours, torch.float64), [*ref_ins, s0.double()])
    for i, (a, b) in enumerate(zip(got, want)):
        out[f"grad{i}"] = _err(a, b)

    if t >= 2:  # two-part prefill: the state fla returns after the first part carries the second
        cut = t // 2 + 1
        first = [x[:, :cut] for x in ins]
        second = [x[:, cut:] for x in ins]
        _, s_mid = fla(*first, s0)
        o2, s2 = fla(*second, s_mid)
        out["split_o"], out["split_state"] = _err(o2, o_ref[:, cut:]), _err(s2, s_ref)
    return out


def check_steps(dtype_name: str) -> dict[str, float]:
    """fla's fused_recurrent_* kernels for one decode token (T = 1) against our step functions: the drop-ins a
    fused decode step would call."""
    import torch
    import torch.nn.functional as F

    from fla.ops.delta_rule import fused_recurrent_delta_rule
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    from fla.ops.gla import fused_recurrent_gla

    from flashsearch.kernels.deltanet import delta_rule_step
    from flashsearch.kernels.gated_deltanet import gated_delta_rule_step
    from flashsearch.kernels.gla import gla_step

    dtype = _dtype(dtype_name)
    g = _gen(3000)
    b, h, dk, dv = 2, 3, 32, 48
    q = torch.randn(b, 1, h, dk, generator=g).to(dtype)
    k = F.normalize(torch.randn(b, 1, h, dk, generator=g), dim=-1).to(dtype)
    v = torch.randn(b, 1, h, dv, generator=g).to(dtype)
    beta = torch.rand(b, 1, h, generator=g).to(dtype)
    gate = (-0.5 * torch.rand(b, 1, h, generator=g)).to(dtype)
    gk = (F.logsigmoid(torch.randn(b, 1, h, dk, generator=g)) / 16).to(dtype)
    s0 = torch.randn(b, h, dk, dv, generator=g)
    d = [x.double() for x in (q, k, v, beta, gate, gk)]
    q64, k64, v64, beta64, gate64, gk64 = (x[:, 0] for x in d)
    out: dict[str, float] = {}
    cases = {
        "delta_rule": (fused_recurrent_delta_rule(q, k, v, beta, initial_state=s0, output_final_state=True),
                       delta_rule_step(q64, k64, v64, beta64, s0.double())),
        "gated_delta_rule": (fused_recurrent_gated_delta_rule(q, k, v, g=gate, beta=beta, initial_state=s0,
                                                              output_final_state=True),
                             gated_delta_rule_step(q64, k64, v64, gate64, beta64, s0.double())),
        "gla": (fused_recurrent_gla(q, k, v, gk=gk, initial_state=s0, output_final_state=True),
                gla_step(q64, k64, v64, gk64, s0.double())),
    }
    for name, ((o, s), (o_ref, s_ref)) in cases.items():
        out[f"{name}_o"], out[f"{name}_state"] = _err(o[:, 0], o_ref), _err(s, s_ref)
    return out


def check_mamba(t: int, dtype_name: str) -> dict[str, float]:
    """mamba-ssm's mamba_chunk_scan_combined (SSD, with D skip and softplus'd dt) against our ssd_chunked."""
    import torch
    import torch.nn.functional as F

    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    from flashsearch.kernels.mamba2 import ssd_chunked

    dtype = _dtype(dtype_name)
    g = _gen(4000 + t)
    b, h, p, ng, n, L = 2, 4, 16, 2, 24, 32
    x = torch.randn(b, t, h, p, generator=g).to(dtype)
    dt_raw = (torch.randn(b, t, h, generator=g) - 1).to(dtype)
    A = -torch.rand(h, generator=g) - 0.5
    B = torch.randn(b, t, ng, n, generator=g).to(dtype)
    C = torch.randn(b, t, ng, n, generator=g).to(dtype)
    D = torch.randn(h, generator=g)
    dt_bias = 0.1 * torch.randn(h, generator=g)
    s0 = 0.1 * torch.randn(b, h, p, n, generator=g)

    def ours(x, dt_raw, B, C, s0):
        dt = F.softplus(dt_raw + dt_bias.to(dt_raw.dtype))
        y, s = ssd_chunked(x, dt, A.to(x.dtype), B, C, L, initial_state=s0)
        return y + x * D.to(x.dtype)[:, None], s

    def kernel(x, dt_raw, B, C, s0):
        return mamba_chunk_scan_combined(x, dt_raw, A, B, C, L, D=D, dt_bias=dt_bias, dt_softplus=True,
                                         initial_states=s0, return_final_states=True)
    ins = [x, dt_raw, B, C]
    g_w, g_ws = torch.randn(b, t, h, p, generator=g), torch.randn(b, h, p, n, generator=g)
    return _compare(kernel, ours, ins, s0, g_w, g_ws, t=t)


def check_selective_state_update(dtype_name: str) -> dict[str, float]:
    """mamba-ssm's selective_state_update (the fused Mamba2 decode step) against our ssd_step (+ D, softplus)."""
    import torch
    import torch.nn.functional as F

    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    from flashsearch.kernels.mamba2 import ssd_step

    dtype = _dtype(dtype_name)
    g = _gen(5000)
    b, h, p, ng, n = 2, 4, 16, 2, 24
    x = torch.randn(b, h, p, generator=g).to(dtype)
    dt_raw = (torch.randn(b, h, generator=g) - 1).to(dtype)
    A = -torch.rand(h, generator=g) - 0.5
    B, C = (torch.randn(b, ng, n, generator=g).to(dtype) for _ in range(2))
    D, dt_bias = torch.randn(h, generator=g), 0.1 * torch.randn(h, generator=g)
    state = 0.1 * torch.randn(b, h, p, n, generator=g)
    # mamba-ssm's multi-head form: per-(head, channel) A / dt / D broadcast from per-head values (stride 0).
    want_y, want_s = ssd_step(x.double(), F.softplus(dt_raw.double() + dt_bias.double()), A.double(), B.double(),
                              C.double(), state.double())
    want_y = want_y + x.double() * D.double()[:, None]
    s = state.clone()                                                         # updated in place
    y = selective_state_update(s, x, dt_raw[..., None].expand(b, h, p), A[:, None, None].expand(h, p, n), B, C,
                               D=D[:, None].expand(h, p), dt_bias=dt_bias[:, None].expand(h, p), dt_softplus=True)
    return {"o": _err(y, want_y), "state": _err(s, want_s)}


def _mamba_ssm_without_cuda() -> None:
    """Register mamba_ssm as a bare package (its __path__ only), so that importing mamba_ssm.ops.triton.* skips
    the package __init__, which imports the CUDA extension (selective_scan_cuda)."""
    import importlib.util
    import types

    if "mamba_ssm" in sys.modules:
        return
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'mamba_ssm'")
    package = types.ModuleType("mamba_ssm")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = package
    import contextlib

    import torch

    if torch.cuda.is_available():
        return
    torch.cuda.device = lambda index: contextlib.nullcontext()          # `with torch.cuda.device(x.device.index)`
    torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(multi_processor_count=1)


def _mamba_importable() -> str | None:
    """None when mamba-ssm's Triton ops import without its CUDA extension, else why not."""
    try:
        _mamba_ssm_without_cuda()
        import mamba_ssm.ops.triton.selective_state_update  # noqa: F401  (the package __init__ needs CUDA)
        import mamba_ssm.ops.triton.ssd_combined  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any reason is a skip reason
        return f"{type(exc).__name__}: {exc}"
    return None


def _cases(dtypes: tuple[str, ...] = DTYPES) -> dict[str, Callable[[], dict]]:
    cases: dict[str, Callable[[], dict]] = {}
    for dt in dtypes:
        for t in SIZES:
            if dt != "fp32":  # chunk_delta_rule refuses fp32 (our DeltaNet keeps fp32 on the torch form)
                cases[f"delta_rule-{dt}-T{t}"] = lambda t=t, dt=dt: check_delta_rule(t, dt, gated=False)
            cases[f"gated_delta_rule-{dt}-T{t}"] = lambda t=t, dt=dt: check_delta_rule(t, dt, gated=True)
            cases[f"gla-{dt}-T{t}"] = lambda t=t, dt=dt: check_gla(t, dt)
            cases[f"mamba_ssd-{dt}-T{t}"] = lambda t=t, dt=dt: check_mamba(t, dt)
        cases[f"fused_recurrent-{dt}"] = lambda dt=dt: check_steps(dt)
        cases[f"selective_state_update-{dt}"] = lambda dt=dt: check_selective_state_update(dt)
    return cases


def case_names() -> list[str]:
    """Every case, without importing torch or triton (for the test's parametrization)."""
    return list(_cases())


def all_cases(only: str | None = None, dtypes: tuple[str, ...] = DTYPES) -> dict[str, dict]:
    """{case: {quantity: error} or {"skip": reason} or {"error": traceback}} for every case (or those whose name
    contains `only`)."""
    import traceback

    cases = _cases(dtypes)
    results: dict[str, dict] = {}
    mamba_missing = None
    for name, fn in cases.items():
        if only and only not in name:
            continue
        if name.startswith(("mamba", "selective")):
            mamba_missing = mamba_missing or _mamba_importable()
            if mamba_missing:
                results[name] = {"skip": f"mamba_ssm's Triton ops do not import: {mamba_missing}"}
                continue
        try:
            results[name] = fn()
        except Exception:  # noqa: BLE001 - reported per case; the test shows the traceback
            results[name] = {"error": traceback.format_exc(limit=6)}
    return results


def main(argv: list[str]) -> None:
    """`triton_interp.py [--device cuda] [NAME-FILTER]`: interpreter on CPU by default; with --device cuda the
    real kernels on the GPU (no interpreter, bf16 too). Prints `RESULTS <json>`."""
    device = "cpu"
    if argv[:1] == ["--device"]:
        device, argv = argv[1], argv[2:]
    if device == "cpu":
        enable()
    import torch

    torch.set_num_threads(1)
    torch.set_default_device(device)
    res = all_cases(argv[0] if argv else None, DTYPES if device == "cpu" else DEVICE_DTYPES)
    print("RESULTS " + json.dumps(res))             # NaN stays NaN (json's extension), and fails the checks


if __name__ == "__main__":
    main(sys.argv[1:])
