"""Hugging Face integration: config <-> genome, save/load, generate() with our cache, Auto classes, exports."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from factories import TINY_VOCAB, every_operator_genome
import flashsearch  # noqa: F401  (registers the model type with transformers' Auto classes)
from flashsearch.export import export_top, genome_from_hf_config, hf_config_dict
from flashsearch.model import HybridLM
from flashsearch.model.hf import FlashsearchCache, FlashsearchConfig, FlashsearchForCausalLM, MODEL_TYPE

VOCAB = TINY_VOCAB


@pytest.fixture(scope="module")
def model() -> FlashsearchForCausalLM:
    torch.manual_seed(0)
    return FlashsearchForCausalLM(FlashsearchConfig.from_genome(every_operator_genome(), meta_tokens=2)).eval()


# ---- config ----------------------------------------------------------------------------------------------------
def test_config_round_trips_the_genome():
    g = every_operator_genome(ffn_ratio=2.5)
    cfg = FlashsearchConfig.from_genome(g, meta_tokens=3)
    assert cfg.model_type == MODEL_TYPE and cfg.tie_word_embeddings
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 4, 2, 16)
    assert cfg.intermediate_size == 160 and cfg.num_hidden_layers == g.n_layers and cfg.meta_tokens == 3
    assert "full_attention" in cfg.layer_types and "sliding_attention" in cfg.layer_types  # transformers' names
    assert cfg.to_genome() == g
    again = FlashsearchConfig.from_dict(json.loads(cfg.to_json_string()))   # through config.json
    assert again.to_genome() == g and again.meta_tokens == 3
    assert genome_from_hf_config(hf_config_dict(g)) == g
    assert hf_config_dict(g) == FlashsearchConfig.from_genome(g).to_diff_dict()


def test_config_derives_fields_and_rejects_bad_ones():
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(MODEL_TYPE, layer_types=["m2", "f", "attention", "f"], hidden_size=128,
                               num_attention_heads=2)
    assert isinstance(cfg, FlashsearchConfig)
    assert cfg.layer_types == ["mamba2", "ffn", "full_attention", "ffn"]
    assert (cfg.head_dim, cfg.num_key_value_heads, cfg.ffn_ratio, cfg.intermediate_size) == (64, 2, 3.0, 384)
    assert FlashsearchConfig(hidden_size=128, intermediate_size=256).ffn_ratio == 2.0
    for bad, match in [({"layer_types": ["attention", "conv"]}, "unknown operator 'conv'"),
                       ({"layer_types": ["ffn"]}, "no token mixer"),
                       ({"intermediate_size": 100, "ffn_ratio": 3.0}, "disagrees"),
                       ({"num_hidden_layers": 3}, "num_hidden_layers"),
                       ({"tie_word_embeddings": False}, "tie_word_embeddings")]:
        with pytest.raises(ValueError, match=match):
            FlashsearchConfig(**bad)


# ---- save / load ---------------------------------------------------------------------------------------------------
def test_save_pretrained_from_pretrained_gives_identical_logits(model, tmp_path):
    from safetensors import safe_open

    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed.weight" in keys and "lm_head.weight" not in keys      # tied: stored once
    loaded = FlashsearchForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.model.embed.weight                  # and re-tied on load
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_tensors_missing_from_a_checkpoint_get_hybridlm_init(model, tmp_path):
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    a_log = next(k for k in weights if k.endswith("op.A_log"))                # a Mamba2 layer's own parameter
    writer = "model.layers.0.op.o_proj.weight"                                 # a residual writer (depth-scaled)
    dropped = {a_log, writer, "model.meta"}
    save_file({k: v for k, v in weights.items() if k not in dropped}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    loaded, info = FlashsearchForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == dropped
    ours, theirs = dict(model.named_parameters()), dict(loaded.named_parameters())
    for name, p in theirs.items():
        assert torch.equal(p, ours[name]) != (name in dropped), name          # loaded kept, missing re-drawn
    assert ((theirs[a_log] > 0) & (theirs[a_log] < 2.78)).all()               # Mamba2: A in [1, 16]
    n_layers = len(loaded.model.layers)
    assert theirs[writer].std().item() == pytest.approx(0.02 / n_layers ** 0.5, rel=0.2)
    assert theirs["model.meta"].std().item() == pytest.approx(0.02, rel=0.5)


def test_forward_loss_and_cache_paths_agree(model):
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        ref = model.model(ids)                                                 # plain HybridLM forward
        out = model(ids, labels=ids, use_cache=False)
        assert torch.equal(out.logits, ref) and out.past_key_values is None
        expected = torch.nn.functional.cross_entropy(ref[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
        # Prefill part of it, then one token at a time through a cache that must grow past its first size.
        cache = model.new_cache(2, max_length=8)
        pieces = [model(ids[:, :20], past_key_values=cache).logits]
        pieces += [model(ids[:, t:t + 1], past_key_values=cache).logits for t in range(20, 40)]
    assert isinstance(cache, FlashsearchCache) and cache.get_seq_length() == 40 and cache.capacity >= 40
    torch.testing.assert_close(torch.cat(pieces, dim=1), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="attention_mask must be"):             # padding is fine, a 4D mask is not
        model(ids, attention_mask=torch.ones(2, 1, 40, 40))


# ---- generate ------------------------------------------------------------------------------------------------------
def manual_greedy(lm: HybridLM, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding with nothing but HybridLM.init_state / step, one token at a time."""
    state = lm.init_state(prompt.shape[0], prompt.shape[1] + new_tokens)
    for t in range(prompt.shape[1]):
        logits, state = lm.step(prompt[:, t:t + 1], state)
    seq = prompt
    for _ in range(new_tokens):
        token = logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, token], dim=1)
        logits, state = lm.step(token, state)
    return seq


def test_greedy_generate_equals_manual_step_loop(model):
    torch.manual_seed(1)
    prompt = torch.randint(0, VOCAB, (3, 9))
    with torch.no_grad():
        expected = manual_greedy(model.model, prompt, 16)
        out = model.generate(prompt, max_new_tokens=12, do_sample=False, return_dict_in_generate=True)
        assert torch.equal(out.sequences, expected[:, :21])
        cache = out.past_key_values
        assert isinstance(cache, FlashsearchCache) and cache.get_seq_length() == 20  # last token not yet fed
        # Generation continues from a returned cache.
        more = model.generate(out.sequences, cache=cache, max_new_tokens=4, do_sample=False)
    assert torch.equal(more, expected)


def test_beam_search_and_sampling_run(model):
    prompt = torch.randint(0, VOCAB, (2, 5))
    with torch.no_grad():
        beams = model.generate(prompt, max_new_tokens=4, num_beams=3, do_sample=False)
        samples = model.generate(prompt, max_new_tokens=4, do_sample=True, num_return_sequences=2)
    assert beams.shape == (2, 9) and samples.shape == (4, 9)
    assert torch.equal(beams[:, :5], prompt)


# ---- Auto classes and exports ----------------------------------------------------------------------------------
def test_auto_classes_resolve_after_import_flashsearch():
    # A fresh interpreter: `import flashsearch` must stay light, and registration must happen when transformers
    # loads its Auto classes afterwards.
    code = (
        "import sys, flashsearch\n"
        "heavy = [m for m in ('torch', 'transformers', 'ray', 'optuna') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        f"cfg = AutoConfig.for_model('{MODEL_TYPE}', layer_types=['attention', 'ffn'], hidden_size=32,"
        " num_attention_heads=2, vocab_size=50)\n"
        "model = AutoModelForCausalLM.from_config(cfg)\n"
        "print(type(cfg).__name__, type(model).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["FlashsearchConfig", "FlashsearchForCausalLM"]


def test_auto_classes_resolve_in_process():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(MODEL_TYPE, layer_types=["deltanet", "ffn"], hidden_size=32, num_attention_heads=2,
                               vocab_size=50)
    assert type(AutoModelForCausalLM.from_config(cfg)) is FlashsearchForCausalLM


def test_export_top_folders_load_with_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    genomes = [every_operator_genome(), every_operator_genome().with_layers(("mamba2", "ffn"))]
    df = pd.DataFrame({"number": [0, 1], "state": ["COMPLETE"] * 2, "genome_id": [g.id for g in genomes],
                       "quality": [2.0, 3.0], "latency": [2.0, 1.0], "latency_source": ["roofline:h100"] * 2,
                       "genome_json": [g.to_json() for g in genomes]})
    ids = torch.randint(0, VOCAB, (1, 7))

    # Config-only export: AutoConfig reads it, from_config builds a randomly initialized model of that genome.
    folder = export_top(df, tmp_path / "cfg", top=1)[0]
    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, FlashsearchConfig) and config.to_genome() == genomes[0]
    assert config.flashsearch["rank"] == 1 and config.flashsearch["genome_id"] == genomes[0].id
    model = AutoModelForCausalLM.from_config(config).eval()
    assert isinstance(model, FlashsearchForCausalLM) and model(ids).logits.shape == (1, 7, VOCAB)
    with pytest.raises(OSError):                       # no weights in the folder: from_config is the way
        AutoModelForCausalLM.from_pretrained(folder)

    # With weights: from_pretrained loads the saved (seeded random-init) checkpoint exactly.
    folders = export_top(df, tmp_path / "w", top=2, weights=True)
    assert sorted(p.name for p in folders[0].iterdir()) == ["config.json", "generation_config.json",
                                                            "model.safetensors"]
    loaded = AutoModelForCausalLM.from_pretrained(folders[0]).eval()
    again = AutoModelForCausalLM.from_pretrained(export_top(df, tmp_path / "w2", top=1, weights=True)[0]).eval()
    assert loaded.config.flashsearch["weights"] == "random init"
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, again(ids).logits)         # same genome -> same checkpoint
