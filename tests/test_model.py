"""HybridLM: parallel forward == prefill == token-by-token decoding; parameter counts; weight normalization."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from factories import BUILTIN_MIXERS, HYBRID_LAYERS, TINY_VOCAB, flash_1b_genome, tiny_genome
from flashsearch.errors import FlashsearchError
from flashsearch.model import HybridLM, count_parameters, layer_parameters, weight_normalize_

FLASH_1B_PATTERN = flash_1b_genome().layer_types


def decode_logits(model: HybridLM, ids: torch.Tensor) -> torch.Tensor:
    state = model.init_state(ids.shape[0], ids.shape[1])
    out = []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t:t + 1], state)
        out.append(logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("mixer", BUILTIN_MIXERS)
@pytest.mark.parametrize("meta_tokens", [0, 3])
def test_single_operator_model_forward_equals_decoding(mixer, meta_tokens):
    torch.manual_seed(0)
    model = HybridLM(tiny_genome([mixer, "ffn"]), meta_tokens=meta_tokens).eval()
    ids = torch.randint(0, TINY_VOCAB, (2, 21))
    with torch.no_grad():
        torch.testing.assert_close(decode_logits(model, ids), model(ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("meta_tokens", [0, 5])
def test_flash_pattern_forward_equals_decoding_and_prefill(meta_tokens):
    torch.manual_seed(1)
    genome = tiny_genome(FLASH_1B_PATTERN, n_kv_heads=1)                      # GQA 4:1, as Flash-1B
    model = HybridLM(genome, meta_tokens=meta_tokens).eval()
    ids = torch.randint(0, TINY_VOCAB, (2, 37))
    with torch.no_grad():
        full = model(ids)
        assert full.shape == (2, 37, TINY_VOCAB)
        torch.testing.assert_close(decode_logits(model, ids), full, atol=1e-4, rtol=1e-4)
        # prompt in parallel, then decode the rest
        state = model.init_state(2, 37)
        prompt, state = model.prefill(ids[:, :20], state)
        rest = [model.step(ids[:, t:t + 1], state)[0] for t in range(20, 37)]
        torch.testing.assert_close(torch.cat([prompt, *rest], dim=1), full, atol=1e-4, rtol=1e-4)


def test_meta_tokens_change_outputs_and_are_learned():
    torch.manual_seed(2)
    genome = tiny_genome(["attention", "ffn"])
    model = HybridLM(genome, meta_tokens=4)
    plain = HybridLM(genome)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "meta"})
    ids = torch.randint(0, TINY_VOCAB, (1, 8))
    assert model(ids).shape == (1, 8, TINY_VOCAB)
    assert not torch.allclose(model(ids), plain(ids))
    model(ids).sum().backward()
    assert model.meta.grad is not None and model.meta.grad.abs().sum() > 0


def test_bad_meta_tokens():
    with pytest.raises(FlashsearchError, match="meta_tokens"):
        HybridLM(tiny_genome(["attention"]), meta_tokens=-1)


def test_tied_embedding():
    model = HybridLM(tiny_genome(["mamba2", "ffn"]))
    names = [n for n, _ in model.named_parameters()]
    assert "embed.weight" in names and not any("lm_head" in n for n in names)


def test_flash_1b_parameter_count():
    genome = flash_1b_genome()
    n = count_parameters(genome)
    assert abs(n - 0.96e9) / 0.96e9 < 0.02, n
    per_layer = layer_parameters(genome)
    assert len(per_layer) == 24
    # layers + tied embedding + final norm gain == total
    assert sum(per_layer) + genome.vocab_size * genome.d_model + genome.d_model == n
    assert count_parameters(genome, meta_tokens=256) == n + 256 * 2048


def test_count_parameters_matches_a_real_model():
    genome = tiny_genome(FLASH_1B_PATTERN[:8])
    model = HybridLM(genome, meta_tokens=2)
    assert count_parameters(genome, meta_tokens=2) == sum(p.numel() for p in model.parameters())
    assert layer_parameters(genome) == [sum(p.numel() for p in b.parameters()) for b in model.layers]


def test_weight_normalize_gives_unit_rows_and_columns():
    torch.manual_seed(3)
    model = HybridLM(tiny_genome(["deltanet", "ffn", "mamba2", "ffn", "attention", "swa"]))
    weight_normalize_(model)
    checked = 0
    for block in model.layers:
        op = block.op
        for name in op.readers:
            torch.testing.assert_close(getattr(op, name).weight.norm(dim=1), torch.ones(getattr(op, name).out_features))
            checked += 1
        for name in op.writers:
            torch.testing.assert_close(getattr(op, name).weight.norm(dim=0), torch.ones(getattr(op, name).in_features))
            checked += 1
    assert checked == 4 + 3 + 2 + 3 + 4 + 4   # D, F, M2, F, A, swa: readers + writers
    # Other parameters are untouched (embedding rows are not unit).
    assert not torch.allclose(model.embed.weight.norm(dim=1), torch.ones(TINY_VOCAB))


def test_init_is_sane():
    torch.manual_seed(4)
    model = HybridLM(tiny_genome(FLASH_1B_PATTERN[:8]))
    ids = torch.randint(0, TINY_VOCAB, (2, 16))
    loss = F.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    assert abs(loss.item() - math.log(TINY_VOCAB)) < 0.5   # near-uniform predictions


def test_adamw_steps_reduce_loss():
    torch.manual_seed(5)
    model = HybridLM(tiny_genome(HYBRID_LAYERS), meta_tokens=2)
    ids = torch.randint(0, TINY_VOCAB, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        weight_normalize_(model)
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0] - 0.5, losses


def test_unknown_operator_in_genome_is_a_clear_error():
    with pytest.raises(FlashsearchError, match="unknown operator 'lstm'"):
        HybridLM(tiny_genome(["lstm", "ffn"]))
