"""transformers' model contract, re-expressed for FlashsearchForCausalLM (transformers as pinned in .venv: 5.24).

transformers publishes its contract as `ModelTesterMixin` (tests/test_modeling_common.py) and
`GenerationTesterMixin` (tests/generation/test_utils.py) in its repository; neither ships in the wheel, so the cases
that apply to a decoder-only LM are written here against our model, with a tiny config holding every operator
(attention, swa, mamba2, deltanet, gated_deltanet, gla, each followed by an ffn). Each test names the mixin case(s)
it stands for.

Mixin cases that do not apply, and why:
- test_attention_outputs, test_retain_grad_hidden_states_attentions, *_output_attentions, test_eager_matches_sdpa_*,
  test_sdpa_*/test_flash_attn_*/test_flex_attention_*, test_attn_implementation_*: recurrent operators have no
  attention weights and the model has no attention-backend switch (SDPA always); output_attentions=True is refused
  with a clear error (checked below).
- test_inputs_embeds*, test_generate_from_inputs_embeds*: the model takes input_ids only (refused, checked below).
- test_load_save_without_tied_weights, test_tied_weights_keys with untied configs: the LM head is the embedding
  matrix; untying is refused when the config is changed (checked below).
- test_headmasking, test_head_pruning*: removed from transformers 5 (no head_mask anywhere).
- test_torchscript*, test_torch_fx*, test_torch_export*, test_generate_compile*, test_generate_compilation_all_outputs:
  decode states are Python dataclasses (FlashsearchCache.is_compileable = False), so generate never compiles;
  torch.compile of the training forward is the proxy's business (flashsearch/model/fast.py).
- test_past_key_values_format, test_cache_*/test_dynamic_cache_*/test_static_cache_*, test_generate_with_static_cache,
  test_generate_with_quant_cache, test_generate_with_*_cache_*: the model keeps its own FlashsearchCache (recurrent
  states cannot be a DynamicCache); its continue-from-cache contract is checked below.
- test_assisted_decoding_*, test_prompt_lookup_decoding_*: the model is stateful (_is_stateful): recurrent states
  cannot be rolled back, so transformers itself refuses candidate-based decoding for it.
- test_contrastive_*, test_dola_*, test_group_beam_search_*, test_constrained_beam_search_*: moved out of
  transformers 5 to Hub "custom generate" repositories (need downloads).
- test_model_parallelism, test_multi_gpu_*, test_cpu_offload, test_disk_offload*, test_model_parallel_*,
  test_*_fp16/bf16 on accelerators: need several devices or an accelerator; the CPU suite has none.
- test_mismatched_shapes_have_properly_initialized_weights, test_model_base_model_prefix, test_*_feature_extraction,
  test_pipeline_*: no head variants (only a causal LM) and no base-model class of ours.
- test_sdpa_padding_matches_padding_free_with_position_ids, test_*padding_free*: packed sequences (position_ids
  restarting inside a row) are not supported; position_ids are ignored (positions come from the mask).
- test_attention_mask_4d*, test_custom_4d_attention_mask: a 4D mask describes attention only and cannot say which
  tokens a recurrent operator must skip; a 2D mask is required (anything else is refused, checked in test_hf.py).
- test_forward_with_logits_to_keep, test_generate_methods_with_logits_to_keep: forward has no logits_to_keep
  argument (logits are computed at every position), so generate does not pass it.
- test_model_rope_scaling*, test_rope_*: no rope_scaling in the config (RoPE base only, attention's rope_theta).
"""

from __future__ import annotations

import copy

import pytest
import torch

from factories import TINY_VOCAB, every_operator_genome
import flashsearch  # noqa: F401  (registers the model type with transformers' Auto classes)
from flashsearch.model.hf import FlashsearchCache, FlashsearchConfig, FlashsearchForCausalLM

BATCH, SEQ = 3, 11
TOL = dict(atol=1e-5, rtol=1e-5)


def make_config(**kw) -> FlashsearchConfig:
    return FlashsearchConfig.from_genome(every_operator_genome(), pad_token_id=0, eos_token_id=None, **kw)


def make_model(config: FlashsearchConfig | None = None, seed: int = 0) -> FlashsearchForCausalLM:
    torch.manual_seed(seed)
    return FlashsearchForCausalLM(config or make_config()).eval()


@pytest.fixture(scope="module")
def model() -> FlashsearchForCausalLM:
    return make_model()


def ids_and_mask(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' tester inputs: random ids and a random mask whose last column is 1 (pads anywhere else)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY_VOCAB, (BATCH, SEQ), generator=g)
    mask = (torch.rand(BATCH, SEQ, generator=g) > 0.3).long()
    mask[:, -1] = 1
    return ids, mask


# ---- ModelTesterMixin ----------------------------------------------------------------------------------------------
def test_save_load_round_trip(model, tmp_path):
    """test_save_load, test_can_use_safetensors: identical outputs after save_pretrained / from_pretrained."""
    ids, mask = ids_and_mask()
    model.save_pretrained(tmp_path)
    loaded = FlashsearchForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
    assert loaded.lm_head.weight is loaded.model.embed.weight


def test_from_pretrained_with_the_full_state_dict_loads_it(model):
    """test_from_pretrained_no_checkpoint: from_pretrained(None, config, state_dict) gives the same parameters."""
    loaded = FlashsearchForCausalLM.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_every_missing_weight_is_initialized(model):
    """test_can_init_all_missing_weights / test_initialization: with nothing loaded (state_dict={}), every tensor
    gets the constructor's init: finite, the same per-tensor spread (normal 0.02, depth-scaled writers, ones for
    norms, the operators' own inits), never raw memory."""
    torch.manual_seed(1)
    empty = FlashsearchForCausalLM.from_pretrained(None, config=model.config, state_dict={}).eval()
    ours = dict(model.named_parameters())
    for name, p in empty.named_parameters():
        assert torch.isfinite(p).all(), name
        ref = ours[name]
        assert p.abs().max() <= 1.5 * ref.abs().max() + 1e-6, name
        if ref.numel() > 16 and ref.std() > 0:
            assert p.std().item() == pytest.approx(ref.std().item(), rel=0.35), name
        else:
            assert p.mean().item() == pytest.approx(ref.mean().item(), abs=0.7 * ref.abs().max().item() + 1e-6), name
    assert empty.model.embed.weight.std().item() == pytest.approx(0.02, rel=0.1)
    with torch.no_grad():
        assert torch.isfinite(empty(ids_and_mask()[0]).logits).all()


def test_checkpoint_without_the_embedding_and_with_unexpected_keys(model, tmp_path):
    """test_correct_missing_keys / unexpected keys: a checkpoint lacking model.embed.weight and holding a key the
    model does not have loads, reports both, initializes the embedding and ignores the extra tensor."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["model.embed.weight"]
    weights["model.extra.weight"] = torch.ones(3)
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded, info = FlashsearchForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert "model.embed.weight" in info["missing_keys"] and info["unexpected_keys"] == {"model.extra.weight"}
    assert loaded.model.embed.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert loaded.lm_head.weight is loaded.model.embed.weight
    with torch.no_grad():
        assert torch.isfinite(loaded.eval()(ids_and_mask()[0]).logits).all()
    for name, p in loaded.named_parameters():                                  # the rest is the checkpoint's
        if name != "model.embed.weight" and name != "lm_head.weight":
            assert torch.equal(p, dict(model.named_parameters())[name]), name


def test_load_in_another_dtype_and_torch_save(model, tmp_path):
    """test_model_from_pretrained with dtype, test_torch_save_load: a bfloat16 load runs and stays close to fp32;
    a plain torch.save'd state dict loads back exactly."""
    ids, mask = ids_and_mask()
    model.save_pretrained(tmp_path)
    half = FlashsearchForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        low = half(ids, attention_mask=mask).logits
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.05)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    again = make_model(seed=9)
    again.load_state_dict(torch.load(tmp_path / "sd.pt"))
    with torch.no_grad():
        assert torch.equal(again(ids, attention_mask=mask).logits, ref)


def test_determinism_and_tuple_outputs(model):
    """test_determinism, test_model_outputs_equivalence: same outputs twice; return_dict=False is the tuple."""
    ids, mask = ids_and_mask()
    with torch.no_grad():
        a = model(ids, attention_mask=mask, labels=ids, output_hidden_states=True)
        b = model(ids, attention_mask=mask, labels=ids, output_hidden_states=True, return_dict=False)
    assert torch.equal(a.logits, b[1]) and torch.equal(a.loss, b[0])
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b[-1]))


def test_hidden_states_output(model):
    """test_hidden_states_output: embeddings + one per layer, [B, T, hidden]; asked per call or by the config.
    The last one is after the final norm (transformers' convention), so it gives the logits."""
    ids, mask = ids_and_mask()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True)
        hs = out.hidden_states
        assert len(hs) == model.config.num_hidden_layers + 1
        assert all(h.shape == (BATCH, SEQ, model.config.hidden_size) for h in hs)
        assert torch.equal(hs[0], model.model.embed(ids))
        torch.testing.assert_close(hs[-1] @ model.model.embed.weight.T, out.logits, **TOL)
        assert model(ids).hidden_states is None
        config = copy.deepcopy(model.config)
        config.output_hidden_states = True
        by_config = FlashsearchForCausalLM(config).eval()
        by_config.load_state_dict(model.state_dict())
        assert len(by_config(ids).hidden_states) == model.config.num_hidden_layers + 1


def test_refused_options_fail_at_once(model):
    """Attention weights, inputs_embeds and untied embeddings are refused with a clear error."""
    ids, _ = ids_and_mask()
    with pytest.raises(ValueError, match="output_attentions is not supported"):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match="inputs_embeds is not supported"):
        model(inputs_embeds=torch.zeros(1, 2, model.config.hidden_size))
    config = make_config()
    with pytest.raises(ValueError, match="tie_word_embeddings=False is not supported"):
        config.tie_word_embeddings = False
    assert config.tie_word_embeddings is True
    with pytest.raises(ValueError, match="tie_word_embeddings=False is not supported"):
        FlashsearchConfig.from_dict({**make_config().to_dict(), "tie_word_embeddings": False})


def test_resize_token_embeddings_keeps_the_tie():
    """test_resize_tokens_embeddings, test_tie_model_weights, test_model_get_set_embeddings."""
    model = make_model()
    old = model.model.embed.weight.detach().clone()
    model.resize_token_embeddings(TINY_VOCAB + 9)
    assert model.config.vocab_size == TINY_VOCAB + 9
    assert model.lm_head.weight is model.model.embed.weight and model.get_input_embeddings() is model.model.embed
    assert torch.equal(model.model.embed.weight[:TINY_VOCAB], old)
    assert torch.isfinite(model.model.embed.weight).all()
    ids = torch.tensor([[TINY_VOCAB + 8, 3, 5]])
    with torch.no_grad():
        assert model(ids).logits.shape == (1, 3, TINY_VOCAB + 9)
    model.resize_token_embeddings(TINY_VOCAB - 20)
    with torch.no_grad():
        assert model(ids % (TINY_VOCAB - 20)).logits.shape == (1, 3, TINY_VOCAB - 20)
    new = torch.nn.Embedding(TINY_VOCAB, model.config.hidden_size)
    model.set_input_embeddings(new)
    model.tie_weights()
    assert model.lm_head.weight is new.weight


def test_training_backward_reaches_every_parameter():
    """test_training: a loss from labels, with padding, back-propagates to every parameter, finitely."""
    model = make_model().train()
    ids, mask = ids_and_mask()
    out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    assert out.past_key_values is None                                         # no cache while training
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant):
    """test_training_gradient_checkpointing(_use_reentrant): enable / disable, and the same loss and gradients as
    without."""
    ids, mask = ids_and_mask()

    def grads(model):
        model.zero_grad()
        out = model(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = make_model().train()
    ckpt = make_model().train()
    if reentrant:
        ckpt.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    else:
        with pytest.warns(FutureWarning):              # transformers 5.24 renamed it activation_checkpointing_enable
            ckpt.gradient_checkpointing_enable()
    assert ckpt.is_activation_checkpointing and all(b.gradient_checkpointing for b in ckpt.model.layers)
    calls = []
    for block in ckpt.model.layers:                                           # it really recomputes the blocks
        block._forward = (lambda f: lambda *a: (calls.append(1), f(*a))[1])(block._forward)
    (loss_a, ga), (loss_b, gb) = grads(plain), grads(ckpt)
    assert len(calls) == 2 * len(ckpt.model.layers)                          # forward, then recompute in backward
    torch.testing.assert_close(loss_b, loss_a, **TOL)
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], atol=1e-6, rtol=1e-5, msg=name)
    ckpt.activation_checkpointing_disable()
    assert not any(b.gradient_checkpointing for b in ckpt.model.layers)


def test_batching_equivalence(model):
    """test_batching_equivalence: each row of a batch gets the outputs it gets alone."""
    ids, _ = ids_and_mask()
    with torch.no_grad():
        batch = model(ids, output_hidden_states=True)
        for b in range(BATCH):
            alone = model(ids[b:b + 1], output_hidden_states=True)
            torch.testing.assert_close(batch.logits[b], alone.logits[0], **TOL)
            torch.testing.assert_close(batch.hidden_states[-1][b], alone.hidden_states[-1][0], **TOL)


def test_attention_mask_anywhere_equals_the_row_without_its_pads(model):
    """The tester's random attention masks (pads anywhere): each row's logits at its real tokens are those of the
    row with its pads removed."""
    ids, mask = ids_and_mask(3)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        for b in range(BATCH):
            keep = mask[b].bool()
            torch.testing.assert_close(batch[b][keep], model(ids[b][keep][None]).logits[0], **TOL)


def test_left_padding_compatibility(model):
    """GenerationTesterMixin.test_left_padding_compatibility: 32 pads on the left leave the last logits as they
    were (use_cache off, and on)."""
    ids, _ = ids_and_mask()
    pads = torch.full((BATCH, 32), model.config.pad_token_id)
    padded = torch.cat([pads, ids], dim=1)
    mask = torch.cat([torch.zeros(BATCH, 32, dtype=torch.long), torch.ones_like(ids)], dim=1)
    with torch.no_grad():
        plain = model(ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, -1]
        for use_cache in (False, True):
            torch.testing.assert_close(model(padded, attention_mask=mask, use_cache=use_cache).logits[:, -1], plain,
                                       **TOL)


# ---- GenerationTesterMixin -----------------------------------------------------------------------------------------
def argmax_loop(model: FlashsearchForCausalLM, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding by hand: the whole sequence through forward (no cache) for every new token."""
    seq = prompt
    for _ in range(new):
        nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


def test_greedy_generate_equals_a_manual_argmax_loop(model):
    """test_greedy_generate, test_greedy_generate_dict_outputs(_use_cache): sequences, scores, logits and hidden
    states per step, with the cache and without."""
    prompt = ids_and_mask()[0]
    with torch.no_grad():
        expected = argmax_loop(model, prompt, 4)
        for use_cache in (True, False):
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                                 use_cache=use_cache, return_dict_in_generate=True, output_scores=True,
                                 output_logits=True, output_hidden_states=True)
            assert torch.equal(out.sequences, expected)
            assert len(out.scores) == len(out.logits) == len(out.hidden_states) == 4
            assert all(s.shape == (BATCH, model.config.vocab_size) for s in out.scores)
            assert all(len(h) == model.config.num_hidden_layers + 1 for h in out.hidden_states)
            assert isinstance(out.past_key_values, FlashsearchCache) == use_cache


def test_generate_continuing_from_past_key_values_equals_one_call(model):
    """test_generate_continue_from_past_key_values: generating in two calls, the second from the first's cache,
    equals one call."""
    prompt = ids_and_mask()[0]
    with torch.no_grad():
        whole = model.generate(prompt, max_new_tokens=7, do_sample=False)
        first = model.generate(prompt, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        rest = model.generate(first.sequences, cache=first.past_key_values, max_new_tokens=4, do_sample=False)
    assert torch.equal(rest, whole)


def test_batched_generate_with_left_padding_equals_each_prompt_alone(model):
    """Batched generate over prompts of different lengths (left padding, as transformers pads for decoder-only
    models) gives each prompt its own greedy continuation, cached and uncached."""
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, TINY_VOCAB, (n,), generator=g) for n in (3, 12, 7)]
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], mask[b, T - len(p):] = p, 1
    with torch.no_grad():
        for use_cache in (True, False):
            out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, use_cache=use_cache)
            for b, p in enumerate(prompts):
                alone = model.generate(p[None], max_new_tokens=4, do_sample=False)
                assert torch.equal(out[b, T:], alone[0, len(p):]), (b, use_cache)


def test_beam_search_and_sampling(model):
    """test_beam_search_generate(_dict_output), test_sample_generate: beam search with the cache (reordered every
    step) equals beam search without it; sampling is reproducible under a seed; shapes."""
    prompt, _ = ids_and_mask()
    with torch.no_grad():
        beams = model.generate(prompt, max_new_tokens=3, num_beams=3, num_return_sequences=2, do_sample=False)
        uncached = model.generate(prompt, max_new_tokens=3, num_beams=3, num_return_sequences=2, do_sample=False,
                                  use_cache=False)
        assert beams.shape == (2 * BATCH, SEQ + 3) and torch.equal(beams, uncached)
        torch.manual_seed(7)
        a = model.generate(prompt, max_new_tokens=5, do_sample=True, top_k=5)
        torch.manual_seed(7)
        b = model.generate(prompt, max_new_tokens=5, do_sample=True, top_k=5)
    assert torch.equal(a, b) and a.shape == (BATCH, SEQ + 5)


def test_model_is_small(model):
    """test_model_is_small: the contract model stays tiny, so this file stays fast."""
    assert model.num_parameters() < 1_000_000
