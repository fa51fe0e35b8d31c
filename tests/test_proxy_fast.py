"""The fast proxy path (bf16 projection matmuls, small chunks, the compiled CPU kernels) against the eager fp32
path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from factories import full_size_genome
from flashsearch.genome import Genome
from flashsearch.model import HybridLM
from flashsearch.model.fast import Bf16Linear, bf16_linears_, with_proxy_chunk_size
from flashsearch.proxies.base import Budget
from flashsearch.proxies.quality.short_train import ShortTrain

HYBRID = full_size_genome(("deltanet", "ffn", "mamba2", "ffn", "attention", "ffn", "gated_deltanet"), d_model=1024)

# Loss tolerance of the fast path after a short run, in bits/byte: below the genome-to-genome gaps the search must
# resolve (~0.05 and up), above the fast path's own error. Measured with two builds of the CPU kernels (before and
# after their flags changed), seeds 0-3, 1 or 2 threads (identical): final gap at most 0.005 (this test's seed 0:
# 0.0024-0.005), curve gap at most 0.007; without the kernels (bf16 projections alone) the final gap was 0.009.
LOSS_TOL = 0.01


def test_bf16_linear_matches_fp32_forward_and_gradients() -> None:
    torch.manual_seed(0)
    ref = nn.Linear(48, 40, bias=True)
    fast = nn.Linear(48, 40, bias=True)
    fast.load_state_dict(ref.state_dict())
    assert bf16_linears_(fast) == 1 and type(fast) is Bf16Linear
    x = torch.randn(3, 7, 48, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y_fast = ref(x), fast(x2)
    assert y_fast.dtype == torch.float32
    torch.testing.assert_close(y_fast, y_ref, rtol=2e-2, atol=2e-2)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_fast.backward(g)
    assert x2.grad is not None and fast.weight.grad is not None and fast.bias is not None
    for a, b in ((x2.grad, x.grad), (fast.weight.grad, ref.weight.grad), (fast.bias.grad, ref.bias.grad)):
        assert a.dtype == torch.float32
        rel = (a - b).norm() / b.norm()
        assert rel < 1e-2, rel                    # bf16 inputs: ~3 significant digits
    assert (x2.grad - x.grad).abs().max() > 0     # it really ran in bf16 (else this test proves nothing)


def test_proxy_chunk_size_only_touches_chunked_operators_and_is_exact() -> None:
    g = with_proxy_chunk_size(HYBRID, seq_len=128)
    assert g.options("mamba2")["chunk_size"] == 16 and g.options("deltanet")["chunk_size"] == 16
    assert g.options("gated_deltanet")["chunk_size"] == 16
    assert "chunk_size" not in g.options("attention") and "chunk_size" not in g.options("ffn")
    assert with_proxy_chunk_size(HYBRID, seq_len=8).options("mamba2")["chunk_size"] == 8
    small = HYBRID.scaled(64, 16, vocab_size=256).with_options("mamba2", d_state=16, head_dim=16)
    torch.manual_seed(0)
    a = HybridLM(small).double()
    b = HybridLM(with_proxy_chunk_size(small, seq_len=50)).double()
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 256, (2, 50))          # 50 tokens: a partial last chunk for both sizes
    torch.testing.assert_close(b(ids), a(ids), rtol=1e-9, atol=1e-9)


def test_fast_path_trains_to_the_same_loss_as_eager() -> None:
    kw = dict(seq_len=64, batch_size=4, eval_batches=4, log_every=5, lr=3e-3)
    budget = Budget(tokens=30 * 64 * 4)
    eager = ShortTrain(fast=False, **kw).evaluate(HYBRID, budget)  # type: ignore[arg-type]
    fast = ShortTrain(fast=True, **kw).evaluate(HYBRID, budget)  # type: ignore[arg-type]
    assert eager.curve[0][1] - eager.loss > 1.0                    # it learned, so the comparison means something
    assert fast.loss == pytest.approx(eager.loss, abs=LOSS_TOL)
    for (s1, l1), (s2, l2) in zip(eager.curve, fast.curve):
        assert s1 == s2 and l2 == pytest.approx(l1, abs=LOSS_TOL)
    assert fast.proxy_params == eager.proxy_params
    assert fast.extra["cpu_kernel_layers"] == len(HYBRID.layer_types)     # every layer trained on the kernels
    assert eager.extra["cpu_kernel_layers"] == 0


def test_fast_flag_is_validated() -> None:
    from flashsearch.errors import FlashsearchError

    with pytest.raises(FlashsearchError, match="quality.fast must be true or false"):
        ShortTrain(fast="yes")  # type: ignore[arg-type]
