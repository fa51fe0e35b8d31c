"""Padded batches: every operator honours an attention mask in forward, prefill and cached decode.

A batch of prompts of different lengths, padded on the left or on the right (pad ids random: they must not
matter), gives each row, at its real tokens, the logits that row gets alone (fp32, within 1e-5); and the decode
that continues from a padded prefill gives each row the logits of its own decode. Lengths are awkward: one token,
one past a chunk (16), past the sliding window (6), and a row with no pad.
"""

from __future__ import annotations

import pytest
import torch

from factories import BUILTIN_MIXERS, TINY_VOCAB, every_operator_genome, tiny_genome
from flashsearch.errors import FlashsearchError
from flashsearch.model import HybridLM

LENGTHS = (1, 17, 9, 23)        # the longest row is unpadded
TOL = dict(atol=1e-5, rtol=1e-5)
OPERATORS = BUILTIN_MIXERS + ("ffn",)


def padded(rows: list[torch.Tensor], side: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths -> ids [B, T] (random pad ids) and mask [B, T] (1 = real), padded on `side`."""
    T = max(len(r) for r in rows)
    ids = torch.randint(0, TINY_VOCAB, (len(rows), T), generator=gen)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, r in enumerate(rows):
        span = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[b, span], mask[b, span] = r, 1
    return ids, mask


def real(x: torch.Tensor, mask: torch.Tensor, b: int) -> torch.Tensor:
    """Row b of x [B, T, ...] at its real tokens."""
    return x[b][mask[b].bool()]


def model_for(op: str, meta_tokens: int = 0) -> HybridLM:
    torch.manual_seed(0)
    layers = ("attention", "ffn") if op == "ffn" else (op, "ffn")
    return HybridLM(tiny_genome(layers), meta_tokens=meta_tokens).eval()


def rows_for(gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randint(0, TINY_VOCAB, (n,), generator=gen) for n in LENGTHS]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("op", OPERATORS)
def test_padded_forward_equals_each_row_alone(op, side):
    model, gen = model_for(op), torch.Generator().manual_seed(1)
    rows = rows_for(gen)
    ids, mask = padded(rows, side, gen)
    with torch.no_grad():
        batch = model(ids, mask)
        assert torch.isfinite(batch).all()                                  # pads too
        for b, r in enumerate(rows):
            torch.testing.assert_close(real(batch, mask, b), model(r[None])[0], **TOL)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("op", OPERATORS)
def test_padded_prefill_then_decode_equals_each_row_alone(op, side):
    """Prefill in two padded pieces (the second continues a cache with per-row lengths), then decode steps in
    which one row is fed a pad (its state must not move): per row, the logits of that row alone."""
    model, gen = model_for(op), torch.Generator().manual_seed(2)
    rows = rows_for(gen)
    ids, mask = padded(rows, side, gen)
    cut = ids.shape[1] // 2
    steps = torch.randint(0, TINY_VOCAB, (len(rows), 5), generator=gen)
    step_mask = torch.ones_like(steps)
    step_mask[0, 3] = 0                                                     # row 0 is fed a pad at step 3
    with torch.no_grad():
        state = model.init_state(len(rows), ids.shape[1] + steps.shape[1])
        first, state = model.prefill(ids[:, :cut], state, mask[:, :cut])
        second, state = model.prefill(ids[:, cut:], state, mask[:, cut:])
        prompt = torch.cat([first, second], dim=1)
        decoded = []
        for t in range(steps.shape[1]):
            logits, state = model.step(steps[:, t:t + 1], state, step_mask[:, t:t + 1])
            decoded.append(logits)
        decoded = torch.cat(decoded, dim=1)
        for b, r in enumerate(rows):
            alone = model.init_state(1, len(r) + steps.shape[1])
            ref, alone = model.prefill(r[None], alone)
            torch.testing.assert_close(real(prompt, mask, b), ref[0], **TOL)
            for t in range(steps.shape[1]):
                if not step_mask[b, t]:
                    continue
                ref, alone = model.step(steps[b:b + 1, t:t + 1], alone)
                torch.testing.assert_close(decoded[b, t], ref[0, 0], **TOL)


@pytest.mark.parametrize("side", ["left", pytest.param("right", marks=pytest.mark.slow)])  # right: per operator above
def test_every_operator_model_with_meta_tokens(side):
    """All operators in one model with meta tokens: padded forward and padded prefill + decode, per row."""
    torch.manual_seed(3)
    model = HybridLM(every_operator_genome(), meta_tokens=2).eval()
    gen = torch.Generator().manual_seed(3)
    rows = rows_for(gen)
    ids, mask = padded(rows, side, gen)
    nxt = torch.randint(0, TINY_VOCAB, (len(rows), 3), generator=gen)
    with torch.no_grad():
        batch = model(ids, mask)
        state = model.init_state(len(rows), ids.shape[1] + 3)
        _, state = model.prefill(ids, state, mask)
        steps = [model.step(nxt[:, t:t + 1], state)[0] for t in range(3)]
        for b, r in enumerate(rows):
            torch.testing.assert_close(real(batch, mask, b), model(r[None])[0], **TOL)
            alone = model.init_state(1, len(r) + 3)
            _, alone = model.prefill(r[None], alone)
            for t in range(3):
                ref, alone = model.step(nxt[b:b + 1, t:t + 1], alone)
                torch.testing.assert_close(steps[t][b, 0], ref[0, 0], **TOL)


def test_padding_changes_nothing_without_pads():
    """An all-ones mask takes the unpadded paths: identical logits."""
    model = model_for("gated_deltanet")
    ids = torch.randint(0, TINY_VOCAB, (2, 11))
    with torch.no_grad():
        assert torch.equal(model(ids, torch.ones_like(ids)), model(ids))


def test_an_operator_without_padding_support_refuses_a_padded_batch(monkeypatch):
    model = model_for("mamba2")
    monkeypatch.setattr(type(model.layers[0].op), "supports_padding", False)
    ids = torch.randint(0, TINY_VOCAB, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    with pytest.raises(FlashsearchError, match="'mamba2' does not support padded batches"):
        model(ids, mask)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the fused kernels' padded inputs)")
@pytest.mark.parametrize("op", BUILTIN_MIXERS)
def test_cuda_fast_paths_honour_the_mask(op):
    """On CUDA in bf16 the operators run fla / mamba_ssm / causal_conv1d (attention: SDPA) on the padded inputs
    (zeroed gates, compacted conv, dt after softplus): per row, the padded forward and prefill match the row alone
    within bf16 noise (relative norm)."""
    def rel_close(got: torch.Tensor, want: torch.Tensor) -> None:
        err, ref = (got.float() - want.float()).norm().item(), want.float().norm().item()
        assert err <= 3e-2 * ref, (err, ref)

    torch.manual_seed(0)
    model = HybridLM(tiny_genome((op, "ffn"))).cuda().to(torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(4)
    rows = rows_for(gen)
    ids, mask = (t.cuda() for t in padded(rows, "left", gen))
    with torch.no_grad():
        batch = model(ids, mask)
        state = model.init_state(len(rows), ids.shape[1] + 1)
        prompt, state = model.prefill(ids, state, mask)
        for b, r in enumerate(rows):
            r = r.cuda()[None]
            rel_close(real(batch, mask, b), model(r)[0])
            alone = model.init_state(1, r.shape[1] + 1)
            ref, alone = model.prefill(r, alone)
            rel_close(real(prompt, mask, b), ref[0])
