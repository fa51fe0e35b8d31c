"""Gated DeltaNet and GLA: chunked == recurrent == fla's naive references (forward and gradients), on awkward sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
# fla's naive recurrences are the external oracles for Gated DeltaNet and GLA: a dev dependency (pinned in the dev
# extra), imported here so that a missing fla fails the suite instead of silently skipping these tests.
from fla.ops.gated_delta_rule import naive as gdn_naive
from fla.ops.gla import naive as gla_naive

from factories import awkward_genome, flash_1b_genome
from flashsearch import kernels as K
from flashsearch.errors import FlashsearchError
from flashsearch.kernels import (GLA, GatedDeltaNet, gated_delta_rule_chunked, gated_delta_rule_step, gla_chunked,
                                 gla_step)
from flashsearch.kernels._common import l2norm

OPS = ("gated_deltanet", "gla")
LENGTHS = (1, 3, 63, 65, 257)
# Non-default variants: values wider than keys / no output gate; GLA with the short conv and no output gate.
VARIANTS = [("gated_deltanet", {}), ("gated_deltanet", {"expand_v": 1.5, "use_output_gate": False}),
            ("gla", {}), ("gla", {"use_short_conv": True, "use_output_gate": False, "expand_v": 0.75})]


# awkward_genome: d_model 48, 3 heads x 24 (GDN: dk 24, dv 24; GLA: key dim 24 -> dk 8, value dim 48 -> dv 16).
GENOME = awkward_genome(("gla", "ffn"))


def decode(op, x: torch.Tensor) -> torch.Tensor:
    state = op.init_state(x.shape[0], x.shape[1], dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        y, state = op.step(x[:, t:t + 1], state)
        ys.append(y)
    return torch.cat(ys, dim=1)


# ---- registry and options ----------------------------------------------------------------------------------------
def test_registry_builds_both():
    g = GENOME
    assert isinstance(K.build_operator("gated_deltanet", g), GatedDeltaNet)
    assert isinstance(K.build_operator("gdn", g), GatedDeltaNet)              # alias
    assert isinstance(K.build_operator("gla", g), GLA)
    assert K.operator_class("gla") is GLA and K.operator_class("gated_deltanet") is GatedDeltaNet


@pytest.mark.parametrize("op, opts, option", [
    ("gated_deltanet", {"chunk": 64}, "chunk"),                               # unknown option
    ("gated_deltanet", {"chunk_size": 0}, "chunk_size"),
    ("gated_deltanet", {"conv_size": 2.0}, "conv_size"),
    ("gated_deltanet", {"expand_v": 0.3}, "expand_v"),                        # 0.3 * head_dim 24 is not whole
    ("gated_deltanet", {"expand_v": -1}, "expand_v"),
    ("gated_deltanet", {"use_output_gate": 1}, "use_output_gate"),
    ("gla", {"expand_k": 1 / 3}, "expand_k"),                                 # key dim 16: 3 heads do not divide
    ("gla", {"expand_v": 0.1}, "expand_v"),                                   # 4.8 not whole
    ("gla", {"gate_logit_normalizer": 0}, "gate_logit_normalizer"),
    ("gla", {"gate_low_rank_dim": 0}, "gate_low_rank_dim"),
    ("gla", {"use_short_conv": "yes"}, "use_short_conv"),
    ("gla", {"feature_map": "relu"}, "feature_map"),
])
def test_bad_options_name_operator_and_option(op, opts, option):
    for build in (lambda: K.build_operator(op, GENOME.with_options(op, **opts)),
                  lambda: K.decode_cost(GENOME.with_options(op, **opts), op, 10)):
        with pytest.raises(FlashsearchError) as err:
            build()
        msg = str(err.value)
        assert f"'{op}'" in msg and option in msg and "\n" not in msg


def test_readers_and_writers_are_linears():
    for name, opts in VARIANTS:
        op = K.build_operator(name, GENOME.with_options(name, **opts))
        for attr in op.readers + op.writers:
            assert isinstance(getattr(op, attr), torch.nn.Linear), (name, attr)


# ---- layer: chunked forward == recurrent step == prefill in pieces ------------------------------------------------
@pytest.mark.parametrize("name, opts", VARIANTS)
@pytest.mark.parametrize("T", LENGTHS)
def test_forward_matches_step_by_step(name, opts, T):
    torch.manual_seed(T)
    op = K.build_operator(name, GENOME.with_options(name, **opts)).eval()
    x = torch.randn(2, T, 48)
    with torch.no_grad():
        torch.testing.assert_close(decode(op, x), op(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, opts", [("deltanet", {}), ("gated_deltanet", {}), VARIANTS[-1]])
def test_decoding_sees_weight_updates(name, opts):
    """The short conv's weight is one parameter read by forward and step alike: after an in-place (optimizer-style)
    update of every parameter, stepping still equals the chunked forward, with outputs that moved."""
    torch.manual_seed(5)
    op = K.build_operator(name, GENOME.with_options(name, **opts)).eval()
    assert hasattr(op, "qkv_conv1d")
    x = torch.randn(2, 9, 48)
    with torch.no_grad():
        before = decode(op, x)
        for p in op.parameters():
            p.add_(0.1 * torch.randn_like(p))
        after = decode(op, x)
        torch.testing.assert_close(after, op(x), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(before, after, atol=1e-3)


@pytest.mark.parametrize("name, opts", VARIANTS)
def test_prefill_in_pieces_matches_forward(name, opts):
    torch.manual_seed(0)
    op = K.build_operator(name, GENOME.with_options(name, **opts, chunk_size=16)).eval()
    x = torch.randn(2, 70, 48)
    with torch.no_grad():
        state = op.init_state(2, 70)
        pieces = []
        for a, b in ((0, 1), (1, 5), (5, 38), (38, 70)):
            y, state = op.prefill(x[:, a:b], state)
            pieces.append(y)
        torch.testing.assert_close(torch.cat(pieces, dim=1), op(x), atol=1e-4, rtol=1e-4)
        # ... and decoding continues from the prefilled state.
        y_next, _ = op.step(x[:, -1:], state)
        ref = op(torch.cat([x, x[:, -1:]], dim=1))[:, -1:]
        torch.testing.assert_close(y_next, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", OPS)
def test_layer_gradients_chunked_match_recurrent(name):
    """Gradients through the whole layer (projections, conv, gates, norm) agree between forward and stepping."""
    torch.manual_seed(3)
    op = K.build_operator(name, GENOME.with_options(name, chunk_size=8)).double()
    x = torch.randn(2, 19, 48, dtype=torch.float64)
    w = torch.randn(2, 19, 48, dtype=torch.float64)
    params = list(op.parameters())
    g_chunk = torch.autograd.grad((op(x) * w).sum(), params)
    g_rec = torch.autograd.grad((decode(op, x) * w).sum(), params)
    for (pname, _), a, b in zip(op.named_parameters(), g_chunk, g_rec):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-6, msg=lambda m: f"{name}.{pname}: {m}")


@pytest.mark.parametrize("name", OPS)
def test_bf16_forward_is_close_to_fp32(name):
    """Low-precision inputs run the recurrence in fp32 (acc_dtype) and stay close to the fp32 layer."""
    torch.manual_seed(4)
    op = K.build_operator(name, GENOME).eval()
    x = torch.randn(2, 40, 48)
    with torch.no_grad():
        y32, y16 = op(x), op.to(torch.bfloat16)(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, atol=5e-2, rtol=5e-2)


# ---- Gated DeltaNet core ---------------------------------------------------------------------------------------
def gdn_inputs(T: int, b=2, h=3, dk=24, dv=20, dtype=torch.float32, decay_scale=1.0):
    torch.manual_seed(T)
    q = torch.randn(b, T, h, dk, dtype=dtype)
    k = l2norm(torch.randn(b, T, h, dk, dtype=dtype))
    v = torch.randn(b, T, h, dv, dtype=dtype)
    g = F.logsigmoid(torch.randn(b, T, h, dtype=dtype) + 2) * decay_scale      # log-decay <= 0
    beta = torch.rand(b, T, h, dtype=dtype)
    S0 = 0.3 * torch.randn(b, h, dk, dv, dtype=dtype)
    return q, k, v, g, beta, S0


def gdn_scan(q, k, v, g, beta, S):
    """Independent per-token recurrence S = a (I - b k k^T) S + b k v^T, o = S^T q / sqrt(dk) (any dtype)."""
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    outs = []
    for t in range(q.shape[1]):
        kt, bt = k[:, t], beta[:, t, :, None, None]                            # [b, h, dk], [b, h, 1, 1]
        S = g[:, t, :, None, None].exp() * (eye - bt * kt[..., :, None] * kt[..., None, :]) @ S \
            + bt * kt[..., :, None] * v[:, t, :, None, :]
        outs.append((q[:, t, :, None, :] @ S).squeeze(-2) * q.shape[-1] ** -0.5)
    return torch.stack(outs, dim=1), S


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk", (16, 64))
def test_gated_delta_rule_chunked_matches_fla_naive(T, chunk):
    q, k, v, g, beta, S0 = gdn_inputs(T)
    o, S = gated_delta_rule_chunked(q, k, v, g, beta, chunk, initial_state=S0)
    o_ref, S_ref = gdn_naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g,
                                                          initial_state=S0, output_final_state=True)
    # fp32 throughout (fla's naive computes in fp32 whatever it is given).
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(S, S_ref, atol=1e-5, rtol=1e-4)
    if T == 257:   # fla's own chunked reference agrees too (no initial-state subtleties there)
        o_chunk, _ = gdn_naive.naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk,
                                                        initial_state=S0)
        torch.testing.assert_close(o, o_chunk, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("T", (3, 65, 257))
def test_gated_delta_rule_fp64_matches_scan(T):
    q, k, v, g, beta, S0 = gdn_inputs(T, dtype=torch.float64)
    o, S = gated_delta_rule_chunked(q, k, v, g, beta, 16, initial_state=S0)
    o_ref, S_ref = gdn_scan(q, k, v, g, beta, S0)
    torch.testing.assert_close(o, o_ref, atol=1e-11, rtol=1e-10)
    torch.testing.assert_close(S, S_ref, atol=1e-11, rtol=1e-10)


def test_gated_delta_rule_step_matches_fla_naive():
    q, k, v, g, beta, S0 = gdn_inputs(5)
    S, outs = S0, []
    for t in range(5):
        o, S = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], S)
        outs.append(o)
    o_ref, S_ref = gdn_naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g,
                                                          initial_state=S0, output_final_state=True)
    torch.testing.assert_close(torch.stack(outs, dim=1), o_ref)
    torch.testing.assert_close(S, S_ref)


@pytest.mark.parametrize("T", (3, 65))
def test_gated_delta_rule_gradients_match_fla_naive(T):
    inputs = [z.requires_grad_() for z in gdn_inputs(T)]                      # q, k, v, g, beta, S0
    w = torch.randn(2, T, 3, 20)
    grads = []
    for fn in (lambda q, k, v, g, b, s: gated_delta_rule_chunked(q, k, v, g, b, 16, initial_state=s),
               lambda q, k, v, g, b, s: gdn_naive.naive_recurrent_gated_delta_rule(
                   q, k, v, b, g, initial_state=s, output_final_state=True)):
        o, S = fn(*inputs)
        grads.append(torch.autograd.grad((o * w).sum() + S.square().sum(), inputs))
    for name, g_chunk, g_ref in zip("q k v g beta S0".split(), *grads):
        torch.testing.assert_close(g_chunk, g_ref, atol=1e-4, rtol=1e-4, msg=lambda m: f"d{name}: {m}")


def test_gated_delta_rule_strong_decay_is_finite_and_exact():
    """Near-total forgetting (g ~ -60 per token) over chunks of 64: no overflow, still the exact recurrence."""
    q, k, v, g, beta, S0 = gdn_inputs(130, dtype=torch.float64, decay_scale=30.0)
    o, S = gated_delta_rule_chunked(q.float(), k.float(), v.float(), g.float(), beta.float(), 64,
                                    initial_state=S0.float())
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    o_ref, _ = gdn_scan(q, k, v, g, beta, S0)
    torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)


# ---- GLA core ------------------------------------------------------------------------------------------------------
def gla_inputs(T: int, b=2, h=3, dk=12, dv=20, dtype=torch.float32, decay_scale=1.0):
    torch.manual_seed(T)
    q = torch.randn(b, T, h, dk, dtype=dtype)
    k = torch.randn(b, T, h, dk, dtype=dtype)
    v = torch.randn(b, T, h, dv, dtype=dtype)
    gk = F.logsigmoid(torch.randn(b, T, h, dk, dtype=dtype) * 2) / 4 * decay_scale   # per-channel log-decay
    S0 = 0.3 * torch.randn(b, h, dk, dv, dtype=dtype)
    return q, k, v, gk, S0


def gla_scan(q, k, v, gk, S):
    """Independent per-token recurrence S = diag(e^gk) S + k v^T, o = S^T q / sqrt(dk) (any dtype)."""
    outs = []
    for t in range(q.shape[1]):
        S = gk[:, t, :, :, None].exp() * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) * q.shape[-1] ** -0.5)
    return torch.stack(outs, dim=1), S


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk", (16, 20, 64))                              # 20: halving stops at blocks of 5
def test_gla_chunked_matches_fla_naive(T, chunk):
    q, k, v, gk, S0 = gla_inputs(T)
    o, S = gla_chunked(q, k, v, gk, chunk, initial_state=S0)
    o_ref, S_ref = gla_naive.naive_recurrent_gla(q, k, v, gk, initial_state=S0,
                                             output_final_state=True)
    torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)          # fp32 (unnormalized q, k)
    torch.testing.assert_close(S, S_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("T", (3, 65, 257))
@pytest.mark.parametrize("chunk", (16, 24))
def test_gla_fp64_matches_scan(T, chunk):
    q, k, v, gk, S0 = gla_inputs(T, dtype=torch.float64)
    o, S = gla_chunked(q, k, v, gk, chunk, initial_state=S0)
    o_ref, S_ref = gla_scan(q, k, v, gk, S0)
    torch.testing.assert_close(o, o_ref, atol=1e-11, rtol=1e-10)
    torch.testing.assert_close(S, S_ref, atol=1e-11, rtol=1e-10)


def test_gla_step_matches_fla_naive():
    q, k, v, gk, S0 = gla_inputs(5)
    S, outs = S0, []
    for t in range(5):
        o, S = gla_step(q[:, t], k[:, t], v[:, t], gk[:, t], S)
        outs.append(o)
    o_ref, S_ref = gla_naive.naive_recurrent_gla(q, k, v, gk, initial_state=S0,
                                             output_final_state=True)
    torch.testing.assert_close(torch.stack(outs, dim=1), o_ref)
    torch.testing.assert_close(S, S_ref)


@pytest.mark.parametrize("T", (3, 65))
def test_gla_gradients_match_fla_naive(T):
    inputs = [z.requires_grad_() for z in gla_inputs(T)]                      # q, k, v, gk, S0
    w = torch.randn(2, T, 3, 20)
    grads = []
    for fn in (lambda q, k, v, gk, s: gla_chunked(q, k, v, gk, 16, initial_state=s),
               lambda q, k, v, gk, s: gla_naive.naive_recurrent_gla(
                   q, k, v, gk, initial_state=s, output_final_state=True)):
        o, S = fn(*inputs)
        grads.append(torch.autograd.grad((o * w).sum() + S.square().sum(), inputs))
    for name, g_chunk, g_ref in zip("q k v gk S0".split(), *grads):
        torch.testing.assert_close(g_chunk, g_ref, atol=2e-4, rtol=1e-4, msg=lambda m: f"d{name}: {m}")


def test_gla_strong_decay_is_finite_and_exact():
    """Decays of e^-50 per token per channel: a factored e^{G_i} e^{-G_j} would overflow; ours stays exact."""
    q, k, v, gk, S0 = gla_inputs(300, dtype=torch.float64, decay_scale=200.0)
    o, S = gla_chunked(*(z.float() for z in (q, k, v, gk)), initial_state=S0.float())
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    o_ref, S_ref = gla_scan(q, k, v, gk, S0)
    torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)
    qq, kk, vv, gg = (z.float().requires_grad_() for z in (q, k, v, gk))
    gla_chunked(qq, kk, vv, gg)[0].square().sum().backward()
    assert all(torch.isfinite(z.grad).all() for z in (qq, kk, vv, gg))


# ---- sizes and decode costs ------------------------------------------------------------------------------------------
FLASH_1B = flash_1b_genome()                # its width and heads; the operators are built one by one


@pytest.mark.parametrize("name, expected", [
    # q, k, v, g, o (5 x 2048^2) + a, b (2 x 2048 x 16) + convs 3 x 2048 x 4 + A_log, dt_bias + norm 128
    ("gated_deltanet", 5 * 2048 * 2048 + 2 * 2048 * 16 + 3 * 2048 * 4 + 2 * 16 + 128),
    # q, k (2 x 2048 x 1024) + v, g, o (3 x 2048^2) + gk low rank 2048x16 + 16x1024 + bias 1024 + norm 128
    ("gla", 2 * 2048 * 1024 + 3 * 2048 * 2048 + 2048 * 16 + 16 * 1024 + 1024 + 128),
])
def test_flash_1b_operator_sizes(name, expected):
    with torch.device("meta"):
        op = K.build_operator(name, FLASH_1B)
    assert sum(p.numel() for p in op.parameters()) == expected


@pytest.mark.parametrize("name, opts", VARIANTS)
def test_decode_cost_matches_parameters_and_state(name, opts):
    """Weights read per step == parameters (+ pre-norm gain); state read == the decode state's size; both
    independent of the context length (constant-size recurrent state)."""
    g = FLASH_1B.with_options(name, **opts)
    with torch.device("meta"):
        op = K.build_operator(name, g)
        state = op.init_state(1, 100)
    n = sum(p.numel() for p in op.parameters())
    cost = K.decode_cost(g, name, 100)
    assert cost.weight_elems == n + g.d_model
    assert cost.state_read_elems == cost.state_write_elems == state.conv.numel() + state.S.numel()
    assert cost.flops >= 2 * n * 0.95 and cost.launches >= 5
    assert K.decode_cost(g, name, 0) == cost == K.decode_cost(g, name, 100_000)


def test_state_sizes():
    cost = K.decode_cost(FLASH_1B, "gated_deltanet", 10)
    assert cost.state_read_elems == 16 * 128 * 128 + 3 * 2048 * 3
    assert K.decode_cost(FLASH_1B, "gla", 10).state_read_elems == 16 * 64 * 128   # no conv by default


# ---- CUDA fast path (fla's Triton chunk kernels) == torch form ------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("T", (1, 63, 257))
def test_cuda_fast_path_matches_torch_form(name, T):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(T)
    op = K.build_operator(name, GENOME).cuda()
    assert op.use_fast_path, "fla (a dev dependency) does not load its Triton kernels on this CUDA machine"
    x = torch.randn(2, T, 48, device="cuda", requires_grad=True)
    w = torch.randn(2, T, 48, device="cuda")
    results = []
    for fast in (True, False):
        op.use_fast_path = fast
        y = op(x)
        grads = torch.autograd.grad((y * w).sum(), [x, *op.parameters()])
        with torch.no_grad():
            state = op.init_state(2, T + 1, device="cuda")
            y_pre, state = op.prefill(x[:, :T], state)
        results.append((y, y_pre, state.S, *grads))
    # On Hopper fla's fp32 dots run in TF32 (10-bit mantissa) while torch's fp32 matmul does not: compare by
    # relative norm at TF32's precision, not elementwise at fp32's (which fails by up to ~8x on an H100).
    for a, b in zip(*results):
        err = (a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)
        assert err <= 1e-2, f"relative error {err:.2e}"
