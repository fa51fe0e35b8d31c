"""lm-eval-harness scores an exported flashsearch model, batched, offline (docs/export.md shows the command).

An exported tiny model (export_top(..., weights=True)) is scored by lm-eval's `hf` model on two local tasks built
from the default corpus (wikipedia articles shipped in a package, no download): rolling log-likelihood
(bits per byte) and greedy generation, with batch size 4, so lm-eval batches documents of different lengths
(generation pads prompts on the left: the padded path of every operator). The tokenizer is a byte-level one
(ids 0-255 = the bytes, as the quality proxy's corpus; 256 = end of text).

Skipped when lm_eval is not installed (it is not a flashsearch dependency: `pip install lm-eval`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from factories import every_operator_genome

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")               # lm-eval's hf model imports it

EOT = "<|endoftext|>"


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte value (what tokenizers' ByteLevel pre-tokenizer emits)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def save_byte_tokenizer(folder: Path) -> None:
    """A byte tokenizer (token id = byte value, EOT = 256) saved as tokenizer.json into folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: b for b, c in enumerate(byte_alphabet())} | {EOT: 256}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, pad_token=EOT)
    fast.save_pretrained(folder)


def write_tasks(folder: Path) -> None:
    """Two lm-eval tasks over 8 short pieces of the default corpus: rolling log-likelihood and greedy generation."""
    from proxies.quality.corpus import wikipedia_articles

    pieces = [text[:80 + 37 * i].decode("utf-8", "ignore") for i, (_, _, text) in
              enumerate(wikipedia_articles(("en-us",))[:8])]
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": p, "prompt": p[:-8], "target": p[-8:]}) + "\n" for p in pieces))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "fs_bytes_ppl.yaml").write_text(
        "task: fs_bytes_ppl\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: bits_per_byte\n  - metric: byte_perplexity\n")
    (folder / "fs_bytes_next.yaml").write_text(
        "task: fs_bytes_next\n" + common + "output_type: generate_until\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_target: '{{target}}'\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")


def run_lm_eval(model_dir: Path, tasks_dir: Path, out: Path, batch_size: int) -> tuple[dict, dict[str, list]]:
    """The documented command (docs/export.md): lm-eval's CLI after `import flashsearch` (which registers the model
    type), offline. Returns the results and, per task, the logged samples in document order."""
    cmd = [sys.executable, "-c", "import flashsearch, lm_eval.__main__ as m; m.cli_evaluate()",
           "run", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--include_path", str(tasks_dir), "--tasks", "fs_bytes_ppl,fs_bytes_next", "--batch_size", str(batch_size),
           "--device", "cpu", "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(out.rglob("results*.json")).read_text())["results"]
    samples = {}
    for task in ("fs_bytes_ppl", "fs_bytes_next"):
        lines = next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()
        samples[task] = sorted((json.loads(line) for line in lines), key=lambda d: d["doc_id"])
    return results, samples


@pytest.mark.slow
def test_lm_eval_scores_an_exported_model_in_batches(tmp_path):
    """Batch size 4 (padded generation, batched scoring) gives the scores and generations of batch size 1."""
    from flashsearch.export import export_top

    genome = every_operator_genome(vocab_size=257)
    df = pd.DataFrame({"number": [0], "state": ["COMPLETE"], "genome_id": [genome.id], "quality": [2.0],
                       "latency": [1.0], "latency_source": ["roofline:h100"], "genome_json": [genome.to_json()]})
    model_dir = export_top(df, tmp_path / "export", top=1, weights=True)[0]
    save_byte_tokenizer(model_dir)
    write_tasks(tmp_path)
    batched, batched_samples = run_lm_eval(model_dir, tmp_path, tmp_path / "bs4", batch_size=4)
    single, single_samples = run_lm_eval(model_dir, tmp_path, tmp_path / "bs1", batch_size=1)
    bpb = batched["fs_bytes_ppl"]["bits_per_byte,none"]
    assert 7.0 < bpb < 9.0                              # an untrained byte model: about log2(257) bits per byte
    assert bpb == pytest.approx(single["fs_bytes_ppl"]["bits_per_byte,none"], rel=1e-5)
    generated = [d["filtered_resps"] for d in batched_samples["fs_bytes_next"]]
    assert len(generated) == 8 and any(g != [""] for g in generated)
    assert generated == [d["filtered_resps"] for d in single_samples["fs_bytes_next"]]
