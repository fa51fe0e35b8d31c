"""Operator library: chunked forward == recurrent decoding == independent references, on awkward sizes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
# The only external oracle for the delta rule: a dev dependency (pinned in the dev extra), imported here so that a
# missing fla fails the suite instead of silently skipping these tests.
from fla.ops.delta_rule import naive

from factories import awkward_genome, flash_1b_genome
from flashsearch import operators
from flashsearch.errors import FlashsearchError
from flashsearch.genome import Genome
from flashsearch import kernels as K
from flashsearch.kernels import (Attention, FFN, Mamba2, delta_rule_chunked, delta_rule_step, ssd_chunked,
                                 ssd_step)
from flashsearch.kernels._common import l2norm

MIXERS = ("attention", "swa", "mamba2", "deltanet")
LENGTHS = (1, 3, 63, 65, 257)


def decode(op, x: torch.Tensor) -> torch.Tensor:
    """Run op token by token through its recurrent step."""
    state = op.init_state(x.shape[0], x.shape[1])
    ys = []
    for t in range(x.shape[1]):
        y, state = op.step(x[:, t:t + 1], state)
        ys.append(y)
    return torch.cat(ys, dim=1)


# ---- registry and options ----------------------------------------------------------------------------------
def test_registry_names_and_aliases():
    builtin = [s for s in operators.specs() if s.cls.__module__.startswith("flashsearch.kernels.")]
    assert [s.name for s in builtin] == ["attention", "swa", "mamba2", "deltanet", "gated_deltanet", "gla", "ffn"]
    assert [s.letter for s in builtin] == ["A", "S", "M2", "D", "GD", "G", "F"]
    assert [s.role for s in builtin] == ["mixer"] * 6 + ["ffn"]
    for spec in operators.specs():
        assert spec.cls.name == spec.name and K.operator_class(spec.name) is spec.cls
    assert K.operator_class("m2") is Mamba2
    assert K.operator_class("a") is Attention
    assert isinstance(K.build_operator("f", awkward_genome()), FFN)


def test_unknown_operator_is_a_clear_error():
    with pytest.raises(FlashsearchError, match="unknown operator 'lstm'"):
        K.operator_class("lstm")


@pytest.mark.parametrize("op, opts, option", [
    ("attention", {"window": 4}, "window"),                       # option of another operator
    ("mamba2", {"dstate": 16}, "dstate"),
    ("swa", {"window": 0}, "window"),
    ("swa", {"window": 2.5}, "window"),
    ("attention", {"rope_theta": -1.0}, "rope_theta"),
    ("mamba2", {"head_dim": 40}, "head_dim"),                     # does not divide d_inner = 96
    ("mamba2", {"n_groups": 3}, "n_groups"),                      # does not divide 8 heads
    ("mamba2", {"expand": 0}, "expand"),
    ("mamba2", {"d_conv": 0}, "d_conv"),
    ("deltanet", {"chunk_size": 0}, "chunk_size"),
    ("deltanet", {"conv_size": "4"}, "conv_size"),
])
def test_bad_options_name_operator_and_option(op, opts, option):
    with pytest.raises(FlashsearchError) as err:
        K.build_operator(op, awkward_genome(op_options={op: opts}))
    msg = str(err.value)
    assert f"'{op}'" in msg and option in msg and "\n" not in msg


def test_attention_needs_even_head_dim():
    g = Genome(layer_types=("attention",), d_model=30, n_heads=2, n_kv_heads=2, head_dim=15, vocab_size=11)
    with pytest.raises(FlashsearchError, match="'attention'.*even head_dim"):
        K.build_operator("attention", g)


def test_readers_and_writers_are_linears():
    g = awkward_genome()
    for name, cls in ((s.name, s.cls) for s in operators.specs() if s.cls.__module__.startswith("flashsearch.")):
        op = cls(g)
        assert cls.readers and cls.writers
        for attr in cls.readers + cls.writers:
            assert isinstance(getattr(op, attr), torch.nn.Linear), (name, attr)


# ---- chunked forward == recurrent step == parallel prefill ------------------------------------------------------
@pytest.mark.parametrize("name", MIXERS + ("ffn",))
@pytest.mark.parametrize("T", LENGTHS)
def test_forward_matches_step_by_step(name, T):
    torch.manual_seed(T)
    op = K.build_operator(name, awkward_genome()).eval()
    x = torch.randn(2, T, 48)
    with torch.no_grad():
        torch.testing.assert_close(decode(op, x), op(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MIXERS)
def test_prefill_in_pieces_matches_forward(name):
    torch.manual_seed(0)
    g = awkward_genome(op_options={"mamba2": {"chunk_size": 16}, "deltanet": {"chunk_size": 16}})
    op = K.build_operator(name, g).eval()
    x = torch.randn(2, 70, 48)
    with torch.no_grad():
        state = op.init_state(2, 70)
        pieces = []
        for a, b in ((0, 1), (1, 5), (5, 38), (38, 70)):             # odd splits, some longer than the window
            y, state = op.prefill(x[:, a:b], state)
            pieces.append(y)
        y_last, _ = op.step(torch.zeros(2, 1, 48), op.init_state(2, 1))  # state object stays usable
        torch.testing.assert_close(torch.cat(pieces, dim=1), op(x), atol=1e-4, rtol=1e-4)
        assert y_last.shape == (2, 1, 48)


@pytest.mark.parametrize("name", ("attention", "swa"))
def test_attention_cache_overflow_is_a_clear_error(name):
    op = K.build_operator(name, awkward_genome()).eval()      # swa window 20 > max_len 2: the cache can overflow
    state = op.init_state(1, 2)
    x = torch.randn(1, 1, 48)
    with torch.no_grad():
        op.step(x, state)
        op.step(x, state)
        with pytest.raises(FlashsearchError, match="max_len"):
            op.step(x, state)


@pytest.mark.parametrize("name", ("attention", "swa"))
@pytest.mark.parametrize("T", (1, 7, 23, 41))
def test_step_with_static_buffers_matches_forward(name, T):
    """Graph-style stepping: the attended rows fixed to a bucket of 8 (>= pos + 1, masked), the host count frozen
    as under a CUDA-graph replay (which runs no Python), buffers never reallocated; still the full forward
    (swa's window 20 ring wraps for T > 20)."""
    torch.manual_seed(T)
    op = K.build_operator(name, awkward_genome()).eval()
    x = torch.randn(2, T, 48)
    with torch.no_grad():
        state = op.init_state(2, T + 5)
        buffers = [z.data_ptr() for z in (state.k, state.v, state.pos)]
        ys = []
        for t in range(T):
            state.rows = -(-(t + 1) // 8) * 8                   # may exceed the filled rows and the cache
            state.seen = 0                                      # a replay does not advance the host count
            y, state = op.step(x[:, t:t + 1], state)
            ys.append(y)
        assert [z.data_ptr() for z in (state.k, state.v, state.pos)] == buffers and int(state.pos) == T
        torch.testing.assert_close(torch.cat(ys, dim=1), op(x), atol=1e-5, rtol=1e-4)


def test_swa_ring_decodes_past_the_window_forever():
    op = K.build_operator("swa", awkward_genome(op_options={"swa": {"window": 4}})).eval()
    state = op.init_state(1, 4)
    with torch.no_grad():
        for _ in range(9):
            y, state = op.step(torch.randn(1, 1, 48), state)
    assert state.seen == int(state.pos) == 9 and torch.isfinite(y).all()


def test_mamba2_head_dim_error_suggests_a_fix():
    with pytest.raises(FlashsearchError, match=r"head_dim=40 .*d_inner = expand \* d_model = 96; e.g. head_dim=32"):
        K.build_operator("mamba2", awkward_genome(op_options={"mamba2": {"head_dim": 40}}))


def test_swa_ring_buffer_is_window_sized():
    op = K.build_operator("swa", awkward_genome()).eval()
    assert op.init_state(1, 1000).k.shape[2] == 20
    assert op.init_state(1, 7).k.shape[2] == 7


# ---- attention against an independent reference ----------------------------------------------------------------
def reference_attention(op: Attention, x: torch.Tensor, window: int | None) -> torch.Tensor:
    """Explicit-mask softmax attention; RoPE via complex rotation of (i, i + hd/2) pairs; KV heads repeated."""
    B, T, _ = x.shape
    H, Hkv, hd = op.n_heads, op.n_kv_heads, op.head_dim
    q = (x @ op.q_proj.weight.T).view(B, T, H, hd)
    k = (x @ op.k_proj.weight.T).view(B, T, Hkv, hd)
    v = (x @ op.v_proj.weight.T).view(B, T, Hkv, hd)
    freqs = op.rope_theta ** (-torch.arange(hd // 2, dtype=torch.float64) * 2 / hd)
    rot = torch.polar(torch.ones(T, hd // 2, dtype=torch.float64),
                      torch.arange(T, dtype=torch.float64)[:, None] * freqs[None])   # [T, hd/2]

    def rope(z):
        zc = torch.complex(z[..., :hd // 2].double(), z[..., hd // 2:].double()) * rot[:, None, :]
        return torch.cat([zc.real, zc.imag], dim=-1).to(z.dtype)

    q, k = rope(q), rope(k)
    k, v = k.repeat_interleave(H // Hkv, dim=2), v.repeat_interleave(H // Hkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    i = torch.arange(T)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed &= i[None, :] > i[:, None] - window
    p = scores.masked_fill(~allowed, -math.inf).softmax(-1)
    y = torch.einsum("bhqk,bkhd->bqhd", p, v).reshape(B, T, H * hd)
    return y @ op.o_proj.weight.T


@pytest.mark.parametrize("T", (3, 20, 21, 65))
def test_swa_matches_explicit_banded_mask(T):
    torch.manual_seed(1)
    op = K.build_operator("swa", awkward_genome()).eval()
    x = torch.randn(2, T, 48)
    with torch.no_grad():
        torch.testing.assert_close(op(x), reference_attention(op, x, window=20), atol=1e-5, rtol=1e-4)


def test_attention_matches_reference_and_swa_with_large_window():
    torch.manual_seed(2)
    g = awkward_genome(op_options={"swa": {"window": 512}})
    attn, swa = K.build_operator("attention", g).eval(), K.build_operator("swa", g).eval()
    swa.load_state_dict(attn.state_dict())
    x = torch.randn(2, 65, 48)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference_attention(attn, x, window=None), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(swa(x), attn(x))


# ---- DeltaNet core against fla's naive recurrence ------------------------------------------------------------------
def delta_inputs(T: int, b=2, h=3, dk=24, dv=20, dtype=torch.float32):
    # fp32: fla's naive reference computes in fp32 whatever it is given.
    torch.manual_seed(T)
    q = torch.randn(b, T, h, dk, dtype=dtype)                                  # [b, t, h, d] (fla's layout)
    k = l2norm(torch.randn(b, T, h, dk, dtype=dtype))
    v = torch.randn(b, T, h, dv, dtype=dtype)
    beta = torch.rand(b, T, h, dtype=dtype)
    S0 = 0.3 * torch.randn(b, h, dk, dv, dtype=dtype)
    return q, k, v, beta, S0


def naive_delta_rule(q, k, v, beta, initial_state):
    """fla's naive delta_rule_recurrence (which takes [b, h, t, d]) called in our [b, t, h, d] layout."""
    o, S = naive.delta_rule_recurrence(*(z.transpose(1, 2) for z in (q, k, v, beta)), initial_state=initial_state)
    return o.transpose(1, 2), S


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk", (16, 64))
def test_delta_rule_chunked_matches_fla_naive(T, chunk):
    q, k, v, beta, S0 = delta_inputs(T)
    o, S = delta_rule_chunked(q, k, v, beta, chunk, initial_state=S0)
    o_ref, S_ref = naive_delta_rule(q, k, v, beta, initial_state=S0)
    torch.testing.assert_close(o, o_ref, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(S, S_ref, atol=5e-5, rtol=1e-4)


def test_delta_rule_step_matches_fla_naive():
    q, k, v, beta, S0 = delta_inputs(5)
    S, outs = S0, []
    for t in range(5):
        o, S = delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], S)
        outs.append(o)
    o_ref, S_ref = naive_delta_rule(q, k, v, beta, initial_state=S0)
    torch.testing.assert_close(torch.stack(outs, dim=1), o_ref)
    torch.testing.assert_close(S, S_ref)


@pytest.mark.parametrize("T", (3, 65))
def test_delta_rule_gradients_match_fla_naive(T):
    inputs = [z.requires_grad_() for z in delta_inputs(T)]
    w = torch.randn(2, T, 3, 20)
    grads = []
    for fn in (lambda *a: delta_rule_chunked(*a[:4], 16, initial_state=a[4]),
               lambda *a: naive_delta_rule(*a[:4], initial_state=a[4])):
        o, S = fn(*inputs)
        grads.append(torch.autograd.grad((o * w).sum() + S.square().sum(), inputs))
    for g_chunk, g_ref in zip(*grads):
        torch.testing.assert_close(g_chunk, g_ref, atol=1e-4, rtol=1e-4)


# ---- Mamba2 SSD core against a sequential scan and the materialized quadratic form ----------------------------------
def ssd_scan(x, dt, A, B, C, state):
    """Naive per-token recurrence h = exp(dt A) h + dt x B^T, y = h C (written independently of the library)."""
    b, t, h, p = x.shape
    r = h // B.shape[2]
    ys = []
    for i in range(t):
        Bh, Ch = B[:, i].repeat_interleave(r, 1), C[:, i].repeat_interleave(r, 1)       # [b, h, n]
        state = state * torch.exp(dt[:, i] * A)[..., None, None] + \
            torch.einsum("bhp,bhn->bhpn", x[:, i] * dt[:, i, :, None], Bh)
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch))
    return torch.stack(ys, dim=1), state


def ssd_quadratic(x, dt, A, B, C):
    """The SSD 'attention' form over the whole sequence: y_l = sum_{s<=l} C_l.B_s exp(sum_{s<m<=l} dt_m A) dt_s x_s."""
    r = x.shape[2] // B.shape[2]
    Bh, Ch = B.repeat_interleave(r, 2), C.repeat_interleave(r, 2)                        # [b, t, h, n]
    a = torch.cumsum(dt * A, dim=1)                                                      # [b, t, h]
    T = x.shape[1]
    decay = torch.exp(a[:, :, None, :] - a[:, None, :, :]).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None], 0.0)              # [b, l, s, h]
    scores = torch.einsum("blhn,bshn->blsh", Ch, Bh) * decay
    return torch.einsum("blsh,bshp->blhp", scores, x * dt[..., None])


def ssd_inputs(T: int, b=2, h=6, g=2, p=5, n=7, dtype=torch.float64):
    torch.manual_seed(T)
    x = torch.randn(b, T, h, p, dtype=dtype)
    dt = F.softplus(torch.randn(b, T, h, dtype=dtype) - 1)
    A = -torch.rand(h, dtype=dtype) * 4 - 0.1
    B, C = torch.randn(b, T, g, n, dtype=dtype), torch.randn(b, T, g, n, dtype=dtype)
    S0 = torch.randn(b, h, p, n, dtype=dtype)
    return x, dt, A, B, C, S0


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk", (16, 64))
def test_ssd_chunked_matches_sequential_scan(T, chunk):
    x, dt, A, B, C, S0 = ssd_inputs(T)
    y, S = ssd_chunked(x, dt, A, B, C, chunk, initial_state=S0)
    y_ref, S_ref = ssd_scan(x, dt, A, B, C, S0)
    torch.testing.assert_close(y, y_ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(S, S_ref, atol=1e-9, rtol=1e-9)
    # Without an initial state it is also the quadratic (materialized) form.
    torch.testing.assert_close(ssd_chunked(x, dt, A, B, C, chunk)[0], ssd_quadratic(x, dt, A, B, C))


def test_ssd_step_matches_scan():
    x, dt, A, B, C, S0 = ssd_inputs(4)
    S, ys = S0, []
    for t in range(4):
        y, S = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], S)
        ys.append(y)
    y_ref, S_ref = ssd_scan(x, dt, A, B, C, S0)
    torch.testing.assert_close(torch.stack(ys, dim=1), y_ref)
    torch.testing.assert_close(S, S_ref)


@pytest.mark.parametrize("T", (3, 65))
def test_ssd_gradients_match_scan(T):
    x, dt, A, B, C, S0 = ssd_inputs(T)
    inputs = [z.requires_grad_() for z in (x, dt, A, B, C, S0)]
    w = torch.randn_like(x)
    grads = []
    for fn in (lambda *a: ssd_chunked(*a[:5], 16, initial_state=a[5]), ssd_scan):
        y, S = fn(*inputs)
        grads.append(torch.autograd.grad((y * w).sum() + S.square().sum(), inputs))
    for g_chunk, g_ref in zip(*grads):
        torch.testing.assert_close(g_chunk, g_ref, atol=1e-8, rtol=1e-7)


def test_ssd_long_decay_is_finite():
    """Strong decay over long chunks must underflow to 0, not overflow to inf/nan."""
    x, dt, A, B, C, _ = ssd_inputs(130, dtype=torch.float32)
    y, S = ssd_chunked(x, dt * 50, A * 10, B, C, 64)
    assert torch.isfinite(y).all() and torch.isfinite(S).all()


# ---- layer-level gradients: chunked training path == recurrent path --------------------------------------------
@pytest.mark.parametrize("name", ("mamba2", "deltanet"))
def test_layer_gradients_chunked_match_recurrent(name):
    """Gradients through the whole layer (projections, conv, norm) agree between forward and step-by-step."""
    torch.manual_seed(3)
    g = awkward_genome(op_options={"mamba2": {"chunk_size": 8}, "deltanet": {"chunk_size": 8}})
    op = K.build_operator(name, g).double()
    x = torch.randn(2, 19, 48, dtype=torch.float64)
    w = torch.randn(2, 19, 48, dtype=torch.float64)
    params = [p for p in op.parameters()]
    g_chunk = torch.autograd.grad((op(x) * w).sum(), params)
    state = op.init_state(2, 19, dtype=torch.float64)
    ys = []
    for t in range(19):
        y, state = op.step(x[:, t:t + 1], state)
        ys.append(y)
    g_rec = torch.autograd.grad((torch.cat(ys, 1) * w).sum(), params)
    for (pname, _), a, b in zip(op.named_parameters(), g_chunk, g_rec):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-6, msg=lambda m: f"{name}.{pname}: {m}")


# ---- sizes and decode costs ----------------------------------------------------------------------------------------
FLASH_1B = flash_1b_genome()


@pytest.mark.parametrize("name, expected", [("attention", 10.5e6), ("mamba2", 25.8e6), ("deltanet", 16.8e6),
                                            ("ffn", 3 * 2048 * 6144)])
def test_flash_1b_operator_sizes(name, expected):
    with torch.device("meta"):
        op = K.build_operator(name, FLASH_1B)
    n = sum(p.numel() for p in op.parameters())
    assert abs(n - expected) / expected < 0.01, n


def test_mamba2_matches_mamba_ssm_layout():
    with torch.device("meta"):
        op = K.build_operator("mamba2", FLASH_1B)
    d_inner, n_heads, conv_dim = 4096, 64, 4096 + 2 * 128
    assert op.in_proj.weight.shape == (2 * d_inner + 2 * 128 + n_heads, 2048)
    assert op.conv1d.weight.shape == (conv_dim, 1, 4) and op.conv1d.bias.shape == (conv_dim,)
    assert op.out_proj.weight.shape == (2048, d_inner)
    assert op.A_log.shape == op.D.shape == op.dt_bias.shape == (n_heads,)


@pytest.mark.parametrize("name", MIXERS + ("ffn",))
def test_decode_cost_weights_match_parameters(name):
    """Weights read per step == the layer's parameters (operator + pre-norm gain)."""
    with torch.device("meta"):
        op = K.build_operator(name, FLASH_1B)
    n = sum(p.numel() for p in op.parameters()) + FLASH_1B.d_model
    cost = K.decode_cost(FLASH_1B, name, 100)
    assert cost.weight_elems == n
    assert cost.flops >= 2 * (n - FLASH_1B.d_model) * 0.95 and cost.launches >= 2


def test_decode_cost_state_scaling():
    g = FLASH_1B.with_options("swa", window=512)
    kv_row = 2 * 4 * 128
    assert K.decode_cost(g, "attention", 1000).state_read_elems == 1001 * kv_row
    assert K.decode_cost(g, "attention", 8000).state_read_elems == 8001 * kv_row
    assert K.decode_cost(g, "swa", 100).state_read_elems == 101 * kv_row
    assert K.decode_cost(g, "swa", 8000).state_read_elems == 512 * kv_row
    for name in ("mamba2", "deltanet", "gated_deltanet", "gla", "ffn"):
        assert K.decode_cost(g, name, 10) == K.decode_cost(g, name, 10000)
    assert K.decode_cost(g, "mamba2", 0).state_read_elems == 64 * 64 * 128 + (4096 + 256) * 3
    assert K.decode_cost(g, "deltanet", 0).state_write_elems == 16 * 128 * 128 + 3 * 2048 * 3
