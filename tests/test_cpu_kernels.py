"""The compiled CPU kernels (kernels/cpu.py): forward and gradients against fla's naive recurrences and
our torch forms, on awkward lengths (1, 3, a segment boundary +- 1, 257) and head sizes (the 16 x 16 compile-time
path and a runtime-sized one), with and without an initial state; and the model switch that turns them on."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from fla.ops.delta_rule import naive as delta_naive
from fla.ops.gated_delta_rule import naive as gdn_naive

from flashsearch.genome import Genome
from flashsearch.kernels import cpu, ssd_chunked
from flashsearch.kernels._common import causal_conv1d, l2norm
from flashsearch.model import HybridLM
from flashsearch.model.fast import bf16_linears_, cpu_kernels_

if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler on this machine: the CPU kernels cannot be built (the torch forms run instead)",
                allow_module_level=True)

LENGTHS = (1, 3, 31, 33, 257)          # the backward recomputes 32-token segments
SIZES = ((16, 16), (24, 20))           # compile-time sizes, runtime sizes


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


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("dk,dv", SIZES)
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


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("p,n", SIZES)
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
                                                (2, 4, 4, 65, 16, 20), (1, 2, 1, 1, 16, None), (1, 2, 2, 17, 8, 1)])
def test_attention_matches_sdpa_with_the_same_mask(B: int, H: int, HKV: int, T: int, D: int, window: int | None) -> None:
    """GQA, sliding windows (1 = only itself), key counts that are no multiple of the 16-key blocks."""
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
        cpu._extension().delta_fwd(q, q, q, torch.rand(1, 4, 2, dtype=torch.float64), None, None, 1.0)


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
