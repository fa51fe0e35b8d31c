"""CUDA fast paths (fla's chunk_delta_rule for DeltaNet; mamba_ssm's SSD kernel + causal_conv1d for Mamba2; SDPA
for attention): chosen once at construction, off on CPU, and glued correctly.

Without a GPU the glue (layouts, transposes, scale, dt/softplus/D conventions, state in and out) is still
checked: the kernel lookup is replaced by torch references written here in the kernels' own conventions (fla's
[B, T, H, d]; mamba_ssm's [b, l, h, p] and raw dt; causal_conv1d's [B, C, T]), the "is CUDA" predicate is forced,
and the result must equal the torch form. The @pytest.mark.gpu tests compare the real kernels with the torch
form (forward, gradients, prefill state) in bf16 and skip without CUDA or without the packages.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from factories import awkward_genome
from flashsearch import kernels as K
from flashsearch.kernels import _common
from flashsearch.kernels import deltanet as deltanet_mod
from flashsearch.kernels import gated_deltanet as gated_deltanet_mod
from flashsearch.kernels import gla as gla_mod
from flashsearch.kernels import mamba2 as mamba2_mod
from flashsearch.kernels.deltanet import FLA_DELTA_RULE
from flashsearch.kernels.mamba2 import CONV_KERNEL, SSD_KERNEL

HAS_CUDA = torch.cuda.is_available()


# DeltaNet 3 heads x 24 (H=3 differs from every T used, so a T/H mix-up cannot hide); Mamba2 8 heads x 12 in 2
# groups, odd d_state; 16-token chunks, so the test sequences span several.
GENOME = awkward_genome(("deltanet", "mamba2"), op_options={"deltanet": {"chunk_size": 16},
                                                            "mamba2": {"chunk_size": 16}})


# ---- torch references in the kernels' own calling conventions -------------------------------------------------
def fla_chunk_delta_rule_ref(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                             use_qk_l2norm_in_kernel=False, **kwargs):
    """fla.ops.delta_rule.chunk_delta_rule's contract, token by token: q, k [B, T, H, K]; v [B, T, H, V];
    beta [B, T, H]; initial_state [B, H, K, V]; returns o [B, T, H, V] (q's dtype) and the final state or None."""
    assert not kwargs, kwargs
    B, T, H, Kd = q.shape
    assert k.shape == q.shape and v.shape[:3] == (B, T, H) and beta.shape == (B, T, H), (q.shape, v.shape, beta.shape)
    assert q.dtype == k.dtype == v.dtype and q.dtype != torch.float32         # fla's own asserts
    if use_qk_l2norm_in_kernel:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    scale = Kd ** -0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)
    S = q.new_zeros(B, H, Kd, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    outs = []
    for t in range(T):
        k_t, v_t, b_t = k[:, t].to(acc), v[:, t].to(acc), beta[:, t].to(acc)     # [B, H, K], [B, H, V], [B, H]
        u = b_t[..., None] * (v_t - torch.einsum("bhk,bhkv->bhv", k_t, S))
        S = S + k_t[..., :, None] * u[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t].to(acc) * scale, S))
    return torch.stack(outs, dim=1).to(q.dtype), (S if output_final_state else None)


def fla_chunk_gated_delta_rule_ref(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                  **kwargs):
    """fla.ops.gated_delta_rule.chunk_gated_delta_rule's contract, token by token: q, k [B, T, H, K]; v [B, T, H, V];
    g (log-decay), beta [B, T, H]; initial_state [B, H, K, V]; S <- e^g S, then the delta rule; o = S^T q * scale."""
    assert not kwargs, kwargs
    B, T, H, Kd = q.shape
    assert k.shape == q.shape and v.shape[:3] == g.shape == beta.shape == (B, T, H), (q.shape, v.shape, g.shape)
    scale = Kd ** -0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)
    S = q.new_zeros(B, H, Kd, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    outs = []
    for t in range(T):
        k_t, v_t, b_t = k[:, t].to(acc), v[:, t].to(acc), beta[:, t].to(acc)
        S = S * g[:, t].to(acc).exp()[..., None, None]
        u = b_t[..., None] * (v_t - torch.einsum("bhk,bhkv->bhv", k_t, S))
        S = S + k_t[..., :, None] * u[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t].to(acc) * scale, S))
    return torch.stack(outs, dim=1).to(q.dtype), (S if output_final_state else None)


def fla_chunk_gla_ref(q, k, v, g, scale=None, initial_state=None, output_final_state=False, **kwargs):
    """fla.ops.gla.chunk_gla's contract, token by token: q, k, g (per-channel log-decay) [B, T, H, K];
    v [B, T, H, V]; initial_state [B, H, K, V]; S <- diag(e^g) S + k v^T; o = S^T q * scale."""
    assert not kwargs, kwargs
    B, T, H, Kd = q.shape
    assert k.shape == g.shape == q.shape and v.shape[:3] == (B, T, H), (q.shape, k.shape, g.shape, v.shape)
    scale = Kd ** -0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)
    S = q.new_zeros(B, H, Kd, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    outs = []
    for t in range(T):
        S = S * g[:, t].to(acc).exp()[..., None] + k[:, t].to(acc)[..., :, None] * v[:, t].to(acc)[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t].to(acc) * scale, S))
    return torch.stack(outs, dim=1).to(q.dtype), (S if output_final_state else None)


def mamba_chunk_scan_combined_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                                  seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, math.inf),
                                  return_final_states=False, return_varlen_states=False):
    """mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined's contract, token by token: x [b, l, h, p];
    dt [b, l, h] (raw: + dt_bias, softplus if dt_softplus); A [h]; B, C [b, l, g, n] (head i in group
    i // (h / g)); D [h] or [h, p]; z gates the output by SiLU; initial_states [b, h, p, n]."""
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    assert dt.shape == (b, l, h) and A.shape == (h,) and B.shape == C.shape == (b, l, g, n) and h % g == 0
    assert D is None or D.shape in ((h,), (h, p))
    assert z is None or z.shape == x.shape
    assert initial_states is None or initial_states.shape == (b, h, p, n)
    assert seq_idx is None and cu_seqlens is None and not return_varlen_states and dt_limit == (0.0, math.inf)
    assert chunk_size >= 1
    acc = torch.promote_types(x.dtype, torch.float32)
    dt = dt.to(acc) + (0 if dt_bias is None else dt_bias.to(acc))
    dt = F.softplus(dt) if dt_softplus else dt
    Bh, Ch = (z_.to(acc).repeat_interleave(h // g, dim=2) for z_ in (B, C))  # [b, l, h, n]
    S = x.new_zeros(b, h, p, n, dtype=acc) if initial_states is None else initial_states.to(acc)
    ys = []
    for t in range(l):
        S = S * (dt[:, t] * A.to(acc)).exp()[..., None, None] \
            + (x[:, t].to(acc) * dt[:, t, :, None])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x.to(acc) * (D.to(acc)[:, None] if D.dim() == 1 else D.to(acc))
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(x.dtype)
    return (y, S) if return_final_states else y


def causal_conv1d_fn_ref(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                         final_states_out=None, activation=None):
    """causal_conv1d.causal_conv1d_fn's contract: x [B, C, T]; weight [C, K] with 2 <= K <= 4; bias [C];
    zero left padding (or initial_states [B, C, K-1]); activation None | 'silu' | 'swish'."""
    assert x.dim() == 3 and weight.dim() == 2 and weight.shape[0] == x.shape[1] and 2 <= weight.shape[1] <= 4
    assert bias is None or bias.shape == (x.shape[1],)
    assert activation in (None, "silu", "swish") and seq_idx is None and not return_final_states
    k1 = weight.shape[1] - 1
    xp = F.pad(x, (k1, 0)) if initial_states is None else torch.cat([initial_states.to(x.dtype), x], dim=-1)
    y = F.conv1d(xp, weight[:, None], bias, groups=x.shape[1])
    return F.silu(y) if activation else y


def raising_kernel(*args, **kwargs):
    raise AssertionError("a CUDA kernel was called on the CPU path")


class FakeKernels:
    """Stands in for _common.cuda_kernel: the given (module, fn) -> function, counting calls; others None."""

    def __init__(self, table):
        self.table, self.calls = table, {key: 0 for key in table}

    def __call__(self, module, fn):
        key = (module, fn)
        if key not in self.table:
            return None

        def counted(*args, **kwargs):
            self.calls[key] += 1
            return self.table[key](*args, **kwargs)
        return counted


def run(op, x, w, split):
    """forward y, gradients of (y * w).sum() w.r.t. x and every parameter, then a prefill in two parts (the second
    starting from a non-zero state): outputs and final state."""
    y = op(x)
    grads = torch.autograd.grad((y * w).sum(), [x, *op.parameters()])
    with torch.no_grad():
        state = op.init_state(x.shape[0], x.shape[1] + 1, device=x.device, dtype=x.dtype)
        y1, state = op.prefill(x[:, :split], state)
        y2, state = op.prefill(x[:, split:], state)
    return [y, *grads, y1, y2, *(v for v in vars(state).values())]


def assert_all_close(got, want, **tol):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, (i, a.shape, b.shape, a.dtype, b.dtype)
        torch.testing.assert_close(a, b, msg=lambda m, i=i: f"result {i}: {m}", **tol)


# ---- the decision: made once, off on CPU, reported -------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only default")
def test_fast_paths_are_off_without_cuda():
    g = GENOME
    dn, m2 = K.build_operator("deltanet", g), K.build_operator("mamba2", g)
    assert dn.use_fast_path is False and dn.fast_path is None
    assert m2.fast_path is None
    assert _common.cuda_kernel(*FLA_DELTA_RULE) is None and _common.cuda_kernel(*SSD_KERNEL) is None
    for name in ("gated_deltanet", "gla"):
        assert K.build_operator(name, g).use_fast_path is False


def test_attention_reports_sdpa():
    g = GENOME
    for name in ("attention", "swa"):
        assert K.build_operator(name, g).fast_path == "sdpa"


def test_decision_is_taken_at_construction(monkeypatch):
    g = GENOME
    fake = FakeKernels({FLA_DELTA_RULE: raising_kernel, SSD_KERNEL: raising_kernel, CONV_KERNEL: raising_kernel})
    monkeypatch.setattr(deltanet_mod, "cuda_kernel", fake)
    monkeypatch.setattr(mamba2_mod, "cuda_kernel", fake)
    dn = K.build_operator("deltanet", g)
    assert dn.use_fast_path is True and dn.fast_path == "fla"
    assert K.build_operator("mamba2", g).fast_path == "mamba_ssm+causal_conv1d"
    # causal_conv1d_fn only implements widths 2..4: a wider conv keeps the torch conv, the SSD kernel still runs.
    assert K.build_operator("mamba2", GENOME.with_options("mamba2", d_conv=5)).fast_path == "mamba_ssm"
    monkeypatch.setattr(mamba2_mod, "cuda_kernel", FakeKernels({CONV_KERNEL: raising_kernel}))
    assert K.build_operator("mamba2", g).fast_path == "causal_conv1d"
    monkeypatch.setattr(mamba2_mod, "cuda_kernel", FakeKernels({}))
    assert K.build_operator("mamba2", g).fast_path is None


@pytest.mark.parametrize("name", ["deltanet", "mamba2"])
def test_cpu_inputs_never_reach_the_kernels(monkeypatch, name):
    """Even with the fast path switched on, CPU tensors take the torch form (the kernels here would raise)."""
    torch.manual_seed(0)
    op = K.build_operator(name, GENOME)
    x, w = torch.randn(2, 37, 48, requires_grad=True), torch.randn(2, 37, 48)
    want = run(op, x, w, split=20)
    fake = FakeKernels({FLA_DELTA_RULE: raising_kernel, SSD_KERNEL: raising_kernel, CONV_KERNEL: raising_kernel})
    monkeypatch.setattr(deltanet_mod, "cuda_kernel", fake)
    monkeypatch.setattr(mamba2_mod, "cuda_kernel", fake)
    if name == "deltanet":
        op.use_fast_path = True
    else:
        op.fast_path = "mamba_ssm+causal_conv1d"
    assert_all_close(run(op, x, w, split=20), want, atol=0, rtol=0)
    assert sum(fake.calls.values()) == 0


def test_missing_package_is_noted_once(monkeypatch, caplog):
    """CUDA present, package absent: one INFO line pointing at flashsearch[gpu], then the torch form."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_common, "_NOTED_MISSING", set())
    _common.cuda_kernel.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=_common.__name__):
            assert _common.cuda_kernel("flashsearch_no_such_pkg.ops", "a") is None
            assert _common.cuda_kernel("flashsearch_no_such_pkg.other", "b") is None
    finally:
        _common.cuda_kernel.cache_clear()
    notes = [r.getMessage() for r in caplog.records if "flashsearch_no_such_pkg" in r.getMessage()]
    assert len(notes) == 1 and "install flashsearch[gpu]" in notes[0]


# ---- the glue, checked on CPU against references in the kernels' conventions ------------------------------------
def force_fast_path(monkeypatch, table):
    fake = FakeKernels(table)
    for mod in (deltanet_mod, mamba2_mod):
        monkeypatch.setattr(mod, "cuda_kernel", fake)
        monkeypatch.setattr(mod, "on_cuda", lambda t: True)
    return fake


@pytest.mark.parametrize("T", [37, 70])
def test_deltanet_fast_path_glue(monkeypatch, T):
    torch.manual_seed(T)
    op = K.build_operator("deltanet", GENOME).double()
    x, w = torch.randn(2, T, 48, dtype=torch.float64, requires_grad=True), torch.randn(2, T, 48, dtype=torch.float64)
    want = run(op, x, w, split=T // 2 + 3)
    fake = force_fast_path(monkeypatch, {FLA_DELTA_RULE: fla_chunk_delta_rule_ref})
    monkeypatch.setattr(deltanet_mod, "FLA_DTYPES", (torch.float64,))   # the reference runs in fp64, exactly
    op.use_fast_path = True
    got = run(op, x, w, split=T // 2 + 3)
    assert fake.calls[FLA_DELTA_RULE] == 3                                 # forward + two prefills
    assert_all_close(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name, opts, T", [("gated_deltanet", {}, 37), ("gated_deltanet", {"expand_v": 1.5}, 70),
                                           ("gla", {}, 37), ("gla", {"use_short_conv": True}, 70)])
def test_fla_gated_fast_path_glue(monkeypatch, name, opts, T):
    """Gated DeltaNet and GLA hand fla the same [B, T, H, D] tensors as their torch cores (and the state in and
    out): with the fla calls replaced by references of fla's contract, everything equals the torch form. The
    log-decay goes to fla in fp32 (as fla wants), hence the fp32-level tolerance."""
    torch.manual_seed(T)
    op = K.build_operator(name, GENOME.with_options(name, **opts)).double()
    x, w = torch.randn(2, T, 48, dtype=torch.float64, requires_grad=True), torch.randn(2, T, 48, dtype=torch.float64)
    want = run(op, x, w, split=T // 2 + 3)
    key = (("fla.ops.gated_delta_rule", "chunk_gated_delta_rule") if name == "gated_deltanet"
           else ("fla.ops.gla", "chunk_gla"))
    fake = FakeKernels({key: fla_chunk_gated_delta_rule_ref if name == "gated_deltanet" else fla_chunk_gla_ref})
    for mod in (gated_deltanet_mod, gla_mod):
        monkeypatch.setattr(mod, "fla_kernel", fake)
        monkeypatch.setattr(mod, "on_cuda", lambda t: True)
        monkeypatch.setattr(mod, "FLA_CHUNK_DTYPES", (torch.float64,))   # the reference runs in fp64, exactly
    op.use_fast_path = True
    got = run(op, x, w, split=T // 2 + 3)
    assert fake.calls[key] == 3                                            # forward + two prefills
    assert_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_deltanet_glue_check_can_fail(monkeypatch):
    """Negative control: a kernel that reads dim 1 as heads ([B, H, T, d]) instead of fla's [B, T, H, d] is
    caught by the comparison above."""
    torch.manual_seed(1)
    op = K.build_operator("deltanet", GENOME).double()
    x, w = torch.randn(2, 37, 48, dtype=torch.float64, requires_grad=True), torch.randn(2, 37, 48, dtype=torch.float64)
    want = run(op, x, w, split=20)[0]

    def head_major(q, k, v, beta, **kw):                                   # treats dim 1 as time
        o, S = fla_chunk_delta_rule_ref(*(z.transpose(1, 2) for z in (q, k, v, beta)), **kw)
        return o.transpose(1, 2), S
    force_fast_path(monkeypatch, {FLA_DELTA_RULE: head_major})
    monkeypatch.setattr(deltanet_mod, "FLA_DTYPES", (torch.float64,))
    op.use_fast_path = True
    y = op(x)
    assert y.shape == want.shape and not torch.allclose(y, want, atol=1e-3)


def test_deltanet_fp32_stays_on_torch_form(monkeypatch):
    """fla's chunk_delta_rule refuses fp32, so fp32 inputs keep the torch form even on CUDA; bf16 goes to fla."""
    torch.manual_seed(2)
    op = K.build_operator("deltanet", GENOME)
    x = torch.randn(2, 20, 48)
    want = op(x)
    fake = force_fast_path(monkeypatch, {FLA_DELTA_RULE: fla_chunk_delta_rule_ref})
    op.use_fast_path = True
    torch.testing.assert_close(op(x), want, atol=0, rtol=0)
    assert fake.calls[FLA_DELTA_RULE] == 0
    op16 = op.to(torch.bfloat16)
    y16 = op16(x.bfloat16())
    assert fake.calls[FLA_DELTA_RULE] == 1 and y16.dtype == torch.bfloat16
    op16.use_fast_path = False
    torch.testing.assert_close(y16, op16(x.bfloat16()), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("T, conv", [(37, True), (70, True), (70, False)])
def test_mamba2_fast_path_glue(monkeypatch, T, conv):
    torch.manual_seed(T)
    op = K.build_operator("mamba2", GENOME).double()
    x, w = torch.randn(2, T, 48, dtype=torch.float64, requires_grad=True), torch.randn(2, T, 48, dtype=torch.float64)
    with torch.no_grad():
        op.D.uniform_(0.5, 1.5)                                            # D != 1: the skip's glue shows
    want = run(op, x, w, split=T // 2 + 3)
    table = {SSD_KERNEL: mamba_chunk_scan_combined_ref}
    if conv:
        table[CONV_KERNEL] = causal_conv1d_fn_ref
    fake = force_fast_path(monkeypatch, table)
    monkeypatch.setattr(mamba2_mod, "SSD_DTYPES", (torch.float64,))      # the reference runs in fp64, exactly
    fast = K.build_operator("mamba2", GENOME).double()           # decided at construction
    assert fast.fast_path == ("mamba_ssm+causal_conv1d" if conv else "mamba_ssm")
    fast.load_state_dict(op.state_dict())
    got = run(fast, x, w, split=T // 2 + 3)
    assert fake.calls[SSD_KERNEL] == 3 and fake.calls.get(CONV_KERNEL, 3) == 3
    assert_all_close(got, want, atol=1e-10, rtol=1e-9)


# ---- the real kernels on a GPU -------------------------------------------------------------------------------------
def assert_rel_close(got, want, tol):
    """bf16 comparison: per tensor, ||got - want|| <= tol * ||want|| (elementwise bf16 tolerances are noise)."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        a, b = a.float(), b.float()
        err, ref = (a - b).norm().item(), b.norm().item()
        assert err <= tol * max(ref, 1e-6), (i, err, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["deltanet", "mamba2"])
@pytest.mark.parametrize("T", [63, 257])
def test_cuda_fast_path_matches_torch_form(name, T):
    if not HAS_CUDA:
        pytest.skip("needs CUDA")
    torch.manual_seed(T)
    op = K.build_operator(name, GENOME).cuda().to(torch.bfloat16)
    if name == "deltanet":          # fla is a dev dependency: on CUDA its kernel must load, not skip
        assert op.fast_path == "fla", "fla's chunk_delta_rule does not import on this CUDA machine"
    elif op.fast_path is None:      # mamba_ssm / causal_conv1d come with flashsearch[gpu] only
        pytest.skip(f"{name}'s CUDA kernels are not installed (pip install 'flashsearch[gpu]')")
    x = torch.randn(2, T, 48, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(2, T, 48, device="cuda", dtype=torch.bfloat16)
    fast_path = op.fast_path
    got = run(op, x, w, split=T // 2 + 3)
    if name == "deltanet":
        op.use_fast_path = False
    else:
        op.fast_path = None
    want = run(op, x, w, split=T // 2 + 3)
    assert fast_path is not None
    assert_rel_close(got, want, tol=3e-2)


@pytest.mark.gpu
def test_cuda_fast_path_is_on_when_packages_import():
    if not HAS_CUDA:
        pytest.skip("needs CUDA")
    g = GENOME
    assert K.build_operator("deltanet", g).use_fast_path == (_common.cuda_kernel(*FLA_DELTA_RULE) is not None)
    want = "+".join(n for n, k in (("mamba_ssm", SSD_KERNEL), ("causal_conv1d", CONV_KERNEL))
                    if _common.cuda_kernel(*k) is not None) or None
    assert K.build_operator("mamba2", g).fast_path == want
