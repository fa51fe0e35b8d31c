"""The compiled CPU kernels (kernels/cpu.py): forward and gradients against fla's naive recurrences and
our torch forms, on awkward lengths (1, 3, a segment boundary +- 1, 257) and head sizes (every compile-time
instantiation, 16, 32 and 64, and a runtime-sized one), with and without an initial state; NaN reaching the
outputs; each operator's schema, fake function and autograd formula (torch.library.opcheck), and tracing by
torch.compile; and the model switch that turns them on."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from fla.ops.delta_rule import naive as delta_naive
from fla.ops.gated_delta_rule import naive as gdn_naive
from torch._dynamo.testing import CompileCounterWithBackend

from flashsearch.genome import Genome
from flashsearch.kernels import cpu, ssd_chunked
from flashsearch.kernels._common import causal_conv1d, l2norm
from flashsearch.model import HybridLM
from flashsearch.model.fast import bf16_linears_, cpu_kernels_

if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler on this machine: the CPU kernels cannot be built (the torch forms run instead)",
                allow_module_level=True)

LENGTHS = (1, 3, 31, 33, 257)          # the backward recomputes 32-token segments
SIZES = ((16, 16), (24, 20))           # a compile-time size (the proxy's), a runtime size
COMPILED_SIZES = ((32, 32), (64, 64))  # the other compile-time sizes (with_sizes in the C++ source)
# (T, dk, dv) / (T, P, N): every length at the first sizes, the other compiled sizes on one and two segments.
SCAN_CASES = [(T, *size) for size in SIZES for T in LENGTHS] + [(T, *size) for size in COMPILED_SIZES for T in (1, 33)]
OPS = torch.ops.flashsearch


@pytest.fixture(autouse=True, scope="module")
def built() -> None:
    """Every test calls the ops (torch.ops.flashsearch.*), which exist once the library is loaded."""
    cpu.available()


def test_the_kernels_build_here() -> None:
    assert cpu.available(), "a C++ compiler is present but the CPU kernels did not build (see the log)"


def delta_inputs(T: int, dk: int, dv: int, gated: bool, b: int = 2, h: int = 3):
    torch.manual_seed(T + dk)
    q = torch.randn(b, T, h, dk)
    k = l2norm(torch.randn(b, T, h, dk))
    v = torch.randn(b, T, h, dv)
    beta = torch.rand(b, T, h)
    g = -torch.rand(b, T, h) * 0.7 if gated else None
    S0 = 0.3 * torch.randn(b, h, dk, dv)
    return q, k, v, beta, g, S0


def fla_delta(q, k, v, beta, g, S0):
    """fla's naive recurrences (fp32), in our [b, t, h, d] layout and scale."""
    if g is None:
        o, S = delta_naive.delta_rule_recurrence(*(z.transpose(1, 2) for z in (q, k, v, beta)), initial_state=S0)
        return o.transpose(1, 2), S
    return gdn_naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=S0, output_final_state=True)


@pytest.mark.parametrize("T,dk,dv", SCAN_CASES)
@pytest.mark.parametrize("gated", (False, True))
def test_delta_rule_forward_and_gradients_match_fla_naive(T: int, dk: int, dv: int, gated: bool) -> None:
    inputs = [z if z is None else z.requires_grad_() for z in delta_inputs(T, dk, dv, gated)]
    used = [z for z in inputs if z is not None]
    w = torch.randn(2, T, 3, dv)
    results = []
    for fn in (lambda q, k, v, beta, g, S0: cpu.delta_rule(q, k, v, beta, g, S0), fla_delta):
        o, S = fn(*inputs)
        grads = torch.autograd.grad((o * w).sum() + S.square().sum(), used)
        results.append((o, S, grads))
    (o, S, grads), (o_ref, S_ref, grads_ref) = results
    torch.testing.assert_close(o, o_ref, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(S, S_ref, atol=5e-5, rtol=1e-4)
    for got, ref in zip(grads, grads_ref):
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)


def test_delta_rule_without_initial_state_and_output_only_gradient() -> None:
    q, k, v, beta, g, _ = delta_inputs(40, 16, 16, gated=True)
    for z in (q, k, v, beta, g):
        z.requires_grad_()
    o, _ = cpu.delta_rule(q, k, v, beta, g)             # the final state is not used: its grad is None
    o_ref, _ = fla_delta(q, k, v, beta, g, None)
    torch.testing.assert_close(o, o_ref, atol=5e-5, rtol=1e-4)
    got = torch.autograd.grad(o.square().sum(), (q, k, v, beta, g))
    ref = torch.autograd.grad(o_ref.square().sum(), (q, k, v, beta, g))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("T,p,n", SCAN_CASES)
def test_ssd_forward_and_gradients_match_the_chunked_form_in_fp64(T: int, p: int, n: int) -> None:
    torch.manual_seed(T)
    b, h, g = 2, 4, 2                                              # two heads per group share B and C
    x, B, C = torch.randn(b, T, h, p), torch.randn(b, T, g, n), torch.randn(b, T, g, n)
    dt, A = torch.rand(b, T, h) * 0.3, -torch.rand(h) * 3
    S0 = torch.randn(b, h, p, n)
    inputs = [z.requires_grad_() for z in (x, dt, A, B, C, S0)]
    ref_inputs = [z.detach().double().requires_grad_() for z in inputs]
    w = torch.randn(b, T, h, p)
    y, S = cpu.ssd(*inputs)
    y_ref, S_ref = ssd_chunked(*ref_inputs[:5], 16, ref_inputs[5])
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(S.double(), S_ref, atol=1e-4, rtol=1e-4)
    got = torch.autograd.grad((y * w).sum() + S.square().sum(), inputs)
    ref = torch.autograd.grad((y_ref * w.double()).sum() + S_ref.square().sum(), ref_inputs)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a.double(), r, atol=5e-4, rtol=1e-4)


@pytest.mark.parametrize("B,H,HKV,T,D,window", [(2, 4, 2, 37, 16, None), (1, 6, 3, 130, 24, None),
                                                (2, 4, 4, 65, 16, 20), (1, 2, 1, 1, 16, None), (1, 2, 2, 17, 8, 1),
                                                (1, 4, 2, 40, 32, None), (1, 2, 2, 33, 64, 9)])
def test_attention_matches_sdpa_with_the_same_mask(B: int, H: int, HKV: int, T: int, D: int, window: int | None) -> None:
    """GQA, sliding windows (1 = only itself), key counts that are no multiple of the 16-key blocks, every
    compile-time head size (16, 32, 64) and runtime ones (24, 8)."""
    torch.manual_seed(T)
    q = torch.randn(B, H, T, D, requires_grad=True)
    k, v = (torch.randn(B, HKV, T, D, requires_grad=True) for _ in range(2))
    o = cpu.causal_attention(q, k, v, window)
    idx = torch.arange(T)
    mask = idx[None, :] <= idx[:, None]
    if window is not None:
        mask &= idx[None, :] > idx[:, None] - window
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=HKV != H)
    torch.testing.assert_close(o, ref, atol=1e-5, rtol=1e-5)
    do = torch.randn_like(o)
    for got, want in zip(torch.autograd.grad(o, (q, k, v), do), torch.autograd.grad(ref, (q, k, v), do)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("T", (1, 2, 5, 130))
@pytest.mark.parametrize("bias", (True, False))
def test_conv_silu_matches_torch_conv(T: int, bias: bool) -> None:
    torch.manual_seed(T)
    x = torch.randn(3, T, 37, requires_grad=True)                 # 37 channels: no vector-width multiple
    w = torch.randn(37, 1, 4, requires_grad=True)
    bb = torch.randn(37, requires_grad=True) if bias else None
    params = [z for z in (x, w, bb) if z is not None]
    y = cpu.conv_silu(x, w, bb)
    y_ref = F.silu(causal_conv1d(x, w, bb))
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, params, dy), torch.autograd.grad(y_ref, params, dy)):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


def test_swiglu_bf16_matches_the_bf16_linears_path() -> None:
    """The fused bf16 FFN rounds where the Bf16Linear path rounds (GEMM inputs and outputs), so the two agree to
    bf16 accumulation-order noise; both agree with fp32 to bf16 precision."""
    torch.manual_seed(0)
    ffn = HybridLM(HYBRID).layers[1].op
    x = torch.randn(3, 29, 32, requires_grad=True)
    ref32 = ffn(x)
    bf16_linears_(ffn)
    ref16 = ffn(x)
    fused = cpu.swiglu_bf16(x, ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight)
    assert fused.dtype == torch.float32 and fused.shape == x.shape
    torch.testing.assert_close(fused, ref16, atol=2e-3, rtol=2e-2)
    torch.testing.assert_close(fused, ref32, atol=1e-2, rtol=5e-2)
    dy = torch.randn_like(fused)
    params = [x, ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight]
    for got, want in zip(torch.autograd.grad(fused, params, dy), torch.autograd.grad(ref16, params, dy)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-2, rtol=5e-2)
    ffn.cpu_kernels = True                                         # the operator picks the fused form itself
    torch.testing.assert_close(ffn(x), fused, atol=0, rtol=0)


def test_bad_inputs_are_refused_not_miscomputed() -> None:
    q = torch.randn(1, 4, 2, 8, dtype=torch.float64)
    assert not cpu.applies(q)                            # fp64 stays on the torch forms
    with pytest.raises(RuntimeError, match="fp32"):
        OPS.delta_fwd(q, q, q, torch.rand(1, 4, 2, dtype=torch.float64), None, None, 1.0)
    q = q.float()
    with pytest.raises(RuntimeError, match="beta must have shape"):   # the kernels index raw pointers by shape
        OPS.delta_fwd(q, q, q, torch.rand(1, 4, 3), None, None, 1.0)
    with pytest.raises(RuntimeError, match=re.escape("with Hkv | H")):
        OPS.attn_fwd(q, q[:, :3], q[:, :3], 1.0, 0)


# ---- NaN in, NaN out: the proxy's divergence check reads a NaN loss, so no kernel may turn one into a number ----
NAN_AT = 5                                                         # the token that carries the NaN


def nan_rows(shape: tuple[int, ...], *index: object) -> torch.Tensor:
    """A bool tensor of `shape`, True exactly at `index`."""
    expected = torch.zeros(shape, dtype=torch.bool)
    expected[index] = True
    return expected


@pytest.mark.parametrize("gated", (False, True))
def test_a_nan_in_the_delta_rule_reaches_every_later_output_of_its_head(gated: bool) -> None:
    q, k, v, beta, g, _ = delta_inputs(12, 16, 16, gated)
    if gated:
        g[0, NAN_AT, 1] = float("nan")                             # a NaN decay: the whole state is NaN
    else:
        k[0, NAN_AT, 1, 0] = float("nan")                          # a NaN key: every column of the update
    o, S = cpu.delta_rule(q, k, v, beta, g)
    assert torch.equal(o.isnan(), nan_rows(o.shape, 0, slice(NAN_AT, None), 1))
    assert torch.equal(S.isnan(), nan_rows(S.shape, 0, 1))


@pytest.mark.parametrize("window", (None, 4))
def test_a_nan_key_reaches_every_query_that_attends_to_it(window: int | None) -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 20, 16), torch.randn(2, 2, 20, 16), torch.randn(2, 2, 20, 16)
    k[0, 0, NAN_AT, 3] = float("nan")                              # kv head 0 serves query heads 0 and 1
    o = cpu.causal_attention(q, k, v, window)
    last = None if window is None else NAN_AT + window             # queries past the window no longer see it
    assert torch.equal(o.isnan(), nan_rows(o.shape, 0, slice(0, 2), slice(NAN_AT, last)))


def test_a_nan_reaches_the_outputs_of_the_ssd_scan_the_conv_and_the_bf16_ffn() -> None:
    torch.manual_seed(0)
    x, dt = torch.randn(2, 12, 4, 16), torch.rand(2, 12, 4) * 0.3
    dt[0, NAN_AT, 1] = float("nan")
    y, _ = cpu.ssd(x, dt, -torch.rand(4), torch.randn(2, 12, 2, 16), torch.randn(2, 12, 2, 16))
    assert torch.equal(y.isnan(), nan_rows(y.shape, 0, slice(NAN_AT, None), 1))
    xc, w = torch.randn(2, 12, 8), torch.randn(8, 1, 4)
    xc[0, NAN_AT, 3] = float("nan")
    yc = cpu.conv_silu(xc, w, None)
    assert torch.equal(yc.isnan(), nan_rows(yc.shape, 0, slice(NAN_AT, NAN_AT + 4), 3))
    ffn = HybridLM(HYBRID).layers[1].op
    xf = torch.randn(2, 12, 32)
    xf[0, NAN_AT, 0] = float("nan")
    yf = cpu.swiglu_bf16(xf, ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight)
    assert torch.equal(yf.isnan(), nan_rows(yf.shape, 0, NAN_AT))


# ---- the torch.library registration: schemas, fake functions, autograd formulas, torch.compile ---------------------
def small(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, requires_grad=True)


OPCHECK_IDS = ("delta_fwd", "delta_fwd_ungated", "delta_bwd", "delta_bwd_ungated", "ssd_fwd", "ssd_bwd",
               "conv_silu_fwd", "conv_silu_fwd_no_bias", "conv_silu_bwd", "attn_fwd", "attn_fwd_window", "attn_bwd",
               "swiglu_fwd", "swiglu_bwd")


def opcheck_cases() -> dict[str, tuple[object, tuple]]:
    """id -> (op, args) for every op: the forward ops on inputs that need gradients (so opcheck also runs the
    autograd formula, traced), the backward ops on what their forward op saved."""
    torch.manual_seed(0)
    b, T, h, d = 1, 35, 2, 8                                       # two checkpoint segments
    q, k, v, beta, g, s0 = (z.requires_grad_() for z in delta_inputs(T, d, d, gated=True, b=b, h=h))
    x, A, Bm, Cm = small(b, T, h, d), small(h), small(b, T, 1, 4), small(b, T, 1, 4)
    dt = (torch.rand(b, T, h) * 0.3).requires_grad_()
    xc, wc, bc = small(b, T, 6), small(6, 4), small(6)
    qa, ka, va = small(b, 4, T, d), small(b, 2, T, d), small(b, 2, T, d)
    hb = torch.randn(6, 10, dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        o, S, ckpt = OPS.delta_fwd(q, k, v, beta, g, s0, 0.3)
        _, _, ckpt_ungated = OPS.delta_fwd(q, k, v, beta, None, None, 0.3)
        y, Sy, ckpt_ssd = OPS.ssd_fwd(x, dt, A, Bm, Cm, None)
        oa, lse = OPS.attn_fwd(qa, ka, va, 0.3, 7)

    def plain(*args: object) -> tuple:                             # a backward op's inputs need no gradients
        return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)

    cases = [
        ("delta_fwd", OPS.delta_fwd, (q, k, v, beta, g, s0, 0.3)),
        ("delta_fwd_ungated", OPS.delta_fwd, (q, k, v, beta, None, None, 0.3)),
        ("delta_bwd", OPS.delta_bwd, plain(q, k, v, beta, g, ckpt, torch.randn_like(o), torch.randn_like(S), 0.3)),
        ("delta_bwd_ungated", OPS.delta_bwd, plain(q, k, v, beta, None, ckpt_ungated, torch.randn_like(o), None, 0.3)),
        ("ssd_fwd", OPS.ssd_fwd, (x, dt, A, Bm, Cm, small(b, h, d, 4))),
        ("ssd_bwd", OPS.ssd_bwd, plain(x, dt, A, Bm, Cm, ckpt_ssd, torch.randn_like(y), torch.randn_like(Sy))),
        ("conv_silu_fwd", OPS.conv_silu_fwd, (xc, wc, bc)),
        ("conv_silu_fwd_no_bias", OPS.conv_silu_fwd, (xc, wc, None)),
        ("conv_silu_bwd", OPS.conv_silu_bwd, plain(xc, wc, bc, torch.randn_like(xc))),
        ("attn_fwd", OPS.attn_fwd, (qa, ka, va, 0.3, 0)),
        ("attn_fwd_window", OPS.attn_fwd, (qa, ka, va, 0.3, 7)),
        ("attn_bwd", OPS.attn_bwd, plain(qa, ka, va, oa, lse, torch.randn_like(oa), 0.3, 7)),
        ("swiglu_fwd", OPS.swiglu_fwd, (hb,)),
        ("swiglu_bwd", OPS.swiglu_bwd, plain(hb, torch.randn(6, 5, dtype=torch.bfloat16))),
    ]
    return {name: (op, args) for name, op, args in cases}


def test_opcheck_covers_every_op() -> None:
    cases = opcheck_cases()
    assert tuple(cases) == OPCHECK_IDS
    assert {op for op, _ in cases.values()} == {getattr(OPS, name) for name in cpu._FAKES}


@pytest.mark.parametrize("case", OPCHECK_IDS)
def test_each_op_passes_opcheck(case: str) -> None:
    """Schema, fake function against the kernel's real outputs, autograd registration, and the op traced by
    AOTAutograd with dynamic shapes (forward, and backward through the registered formula)."""
    op, args = opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_the_kernels_trace_into_one_graph_under_torch_compile() -> None:
    """fullgraph=True fails on any graph break: the functions the operators call are traceable end to end."""
    torch.manual_seed(0)
    q, k, v, beta, g, S0 = (z.requires_grad_() for z in delta_inputs(20, 16, 16, gated=True))
    ffn = HybridLM(HYBRID).layers[1].op

    def layer(q, k, v, beta, g, S0):  # type: ignore[no-untyped-def]
        o, _ = cpu.delta_rule(q, k, v, beta, g, S0)                               # [2, 20, 3, 16]
        x = cpu.conv_silu(o.flatten(2), torch.ones(48, 1, 4), None)[..., :32]    # [2, 20, 32]
        heads = x.view(2, 20, 2, 16).transpose(1, 2)                              # [2, 2, 20, 16]
        a = cpu.causal_attention(heads, heads, heads)
        return cpu.swiglu_bf16(a.transpose(1, 2).flatten(2), ffn.gate_proj.weight, ffn.up_proj.weight,
                               ffn.down_proj.weight)

    eager = layer(q, k, v, beta, g, S0)
    backend = CompileCounterWithBackend("aot_eager")               # AOTAutograd: runs the fakes and formulas
    compiled = torch.compile(layer, backend=backend, fullgraph=True)(q, k, v, beta, g, S0)
    called = {node.target for node in backend.graphs[0].graph.nodes if node.op == "call_function"}
    assert {OPS.delta_fwd, OPS.conv_silu_fwd, OPS.attn_fwd, OPS.swiglu_fwd} <= called
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)
    for a, b in zip(torch.autograd.grad(compiled.sum(), (q, k, g)), torch.autograd.grad(eager.sum(), (q, k, g))):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


HYBRID = Genome(layer_types=("deltanet", "ffn", "mamba2", "gated_deltanet", "attention", "ffn"), d_model=32,
                n_heads=2, n_kv_heads=1, head_dim=16, ffn_ratio=2.0, vocab_size=64,
                op_options={"mamba2": {"d_state": 16, "head_dim": 16, "expand": 2}})


def test_model_with_cpu_kernels_matches_the_torch_forms() -> None:
    torch.manual_seed(0)
    ref = HybridLM(HYBRID)
    fast = HybridLM(HYBRID)
    fast.load_state_dict(ref.state_dict())
    assert cpu_kernels_(fast) == 6                                 # every layer of HYBRID has kernels
    assert not any(getattr(b.op, "cpu_kernels", False) for b in ref.layers)
    ids = torch.randint(0, 64, (2, 45))
    losses = []
    for model in (ref, fast):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1))
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-3, msg=name)


def test_without_the_extension_the_model_keeps_its_torch_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "available", lambda: False)
    model = HybridLM(HYBRID)
    assert cpu_kernels_(model) == 0
    assert not any(getattr(b.op, "cpu_kernels", False) for b in model.layers)
